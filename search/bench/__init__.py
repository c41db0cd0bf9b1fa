"""The performance figures (``python -m search.bench``, BENCHMARKS.md), the methods report
(``python -m search.report``) and the tiny on-disk data they and the tests run on. Nothing here is
imported by the driver."""
