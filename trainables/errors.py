"""The project's bad-input error types.

:class:`InputError` is the one base of every error that means "the user's input cannot be used"
(a search space, a dataset spec, a command-line value, weights, a tracking store, the cluster's
size). ``python -m search.run`` turns exactly these into one line on stderr and exit status 2;
any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input; the one-line message names the problem and the fix."""


class DataError(InputError):
    """A dataset spec or data directory that cannot be used; the message names the fix."""
