"""Fine-tuning library: open_clip models, datasets, methods, the training loop, WiSE-FT, evaluation.

Importing the package registers the project's open_clip architecture configs and every method,
in whichever process imports it (Ray workers included).
"""
from . import models  # noqa: F401  (registers model configs with open_clip)
