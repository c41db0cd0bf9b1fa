"""The method registry: one module per method, each registering its class at import time.

``get_method_class("car-ft")`` returns the class; ``METHODS`` lists them all. Importing this
package (which Ray workers do through ``trainables``) registers every method. Each method's loss,
what it trains and its paper's defaults: docs/methods.md.
"""
from . import arf, car_ft, ce_swa, clip_cite, flyp, ft, l2_sp, lp, lp_ft, zeroshot  # noqa: F401,E402
from .base import (
    METHODS,
    Batch,
    Method,
    MethodContext,
    NoParams,
    Stage,
    get_method_class,
    is_head,
    is_image_tower,
    is_logit_scale,
    is_text_tower,
    register,
)

__all__ = ["METHODS", "Batch", "Method", "MethodContext", "NoParams", "Stage", "get_method_class",
           "is_head", "is_image_tower", "is_logit_scale", "is_text_tower", "register"]
