"""Model soups of a study's own trials (Wortsman et al., 2022: "Model soups").

Every trial of a study fine-tunes from the same zero-shot initialisation, so their weights can be
averaged. The uniform soup averages the top-k trials; the greedy soup walks the trials in order of
their own ID-val accuracy and keeps each one only if the soup's ID-val accuracy strictly improves
(the paper's rule: on a small validation set many additions tie, and a tie is no evidence that
an ingredient helps).
Both choices read ID val only; the soups are then evaluated on every set for the report.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from trainables.checkpoint import WEIGHTS, load_weights


@dataclass
class Ingredient:
    """A finished trial: its id, its fine-tuned ID-val accuracy, and its checkpoint folder."""

    trial_id: str
    id_val: float
    checkpoint: Path


def average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors; other tensors come from the first."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = torch.stack([s[key].float() for s in states]).mean(0).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def uniform_soup(ingredients: list[Ingredient], top_k: int) -> tuple[list[str], dict]:
    """(trial ids, averaged weights) of the ``top_k`` trials by ID-val accuracy."""
    chosen = sorted(ingredients, key=lambda i: -i.id_val)[:top_k]
    return [i.trial_id for i in chosen], average([load_weights(i.checkpoint / WEIGHTS)
                                                 for i in chosen])


def greedy_soup(ingredients: list[Ingredient],
                id_val_of: Callable[[dict[str, torch.Tensor]], float]
                ) -> tuple[list[str], dict, float]:
    """(trial ids kept, weights, soup ID-val accuracy), adding trials best-first, each only if
    the soup's ID val strictly improves. ``id_val_of`` evaluates a state dict on ID val only."""
    ordered = sorted(ingredients, key=lambda i: -i.id_val)
    kept = [ordered[0]]
    states = [load_weights(ordered[0].checkpoint / WEIGHTS)]
    best = id_val_of(states[0])
    for ing in ordered[1:]:
        candidate = states + [load_weights(ing.checkpoint / WEIGHTS)]
        score = id_val_of(average(candidate))
        if score > best:
            kept, states, best = kept + [ing], candidate, score
    return [i.trial_id for i in kept], average(states), best
