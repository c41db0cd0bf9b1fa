"""The method registry: one module per method, each registering its class at import time.

``get_method_class("car-ft")`` returns the class; ``METHODS`` lists them all. Importing this
package (which Ray workers do through ``trainables``) registers every method. Each method's loss,
what it trains and its paper's defaults: docs/methods.md.
"""
from .base import (METHODS, Batch, Method, MethodContext, NoParams, Stage, get_method_class,
                   is_head, is_image_tower, is_logit_scale, is_text_tower, register)
from . import zeroshot, lp, ft, lp_ft, l2_sp, flyp, car_ft, clip_cite, arf, ce_swa  # noqa: F401,E402

__all__ = ["METHODS", "Batch", "Method", "MethodContext", "NoParams", "Stage", "get_method_class",
           "is_head", "is_image_tower", "is_logit_scale", "is_text_tower", "register"]
