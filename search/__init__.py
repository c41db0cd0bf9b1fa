"""The search driver and its parts.

The driver (this package): ``run`` (the command), ``cli``, ``validate``, ``study`` (one study from
set-up to summary), ``space`` (search spaces as validated YAML), ``selection`` (the one WiSE/trial
selection rule), ``soups``, ``resume``/``lock``/``interrupt`` (the study's life cycle on disk) and
``export``/``predict`` (the chosen model as a product).

Subpackages: ``tune`` (everything that touches Ray: cluster, Tuner, the trial worker, faults),
``tracking`` (MLflow names, the recorder and Tune callback, plots, tables, the model registry),
``anchors`` (ARF anchor preparation: retrieval, captioning) and ``bench`` (the performance figures
and the methods report). ``python -m search.prepare`` / ``search.report`` / ``search.bench`` keep
their names.
"""
