"""The data layer's error type, shared by the spec parser, the datasets and the benchmarks."""
from __future__ import annotations


class DataError(ValueError):
    """A dataset spec or data directory that cannot be used; the message names the fix."""
