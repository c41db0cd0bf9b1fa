"""WiSE-FT weight-space ensembling (Wortsman et al., 2022): the one function that interpolates.

``θ(α) = (1 − α)·θ_zs + α·θ_ft`` for every floating-point tensor present in both state dicts;
integer tensors (step counters, index buffers) are copied from θ_ft. When ``keys`` is given only
those entries are interpolated (what the method trained) and the rest is copied from θ_ft, which
for untrained tensors equals θ_zs. α = 0 reproduces θ_zs exactly and α = 1 θ_ft exactly.
Which tensors each method interpolates, and how α is chosen: docs/methods.md#wise-ft.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch

from .errors import InputError


class WiseError(InputError):
    """State dicts that cannot be interpolated; the message says which keys differ."""


def interpolate(theta_zs: Mapping[str, torch.Tensor], theta_ft: Mapping[str, torch.Tensor],
                alpha: float, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Return the WiSE-FT state dict at mixing coefficient ``alpha`` ∈ [0, 1].

    Raises :class:`WiseError` if the two state dicts have different keys or shapes, or if
    ``alpha`` is outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise WiseError(f"alpha must be in [0, 1], got {alpha}")
    if theta_zs.keys() != theta_ft.keys():
        only_zs = sorted(set(theta_zs) - set(theta_ft))[:5]
        only_ft = sorted(set(theta_ft) - set(theta_zs))[:5]
        raise WiseError(f"state dicts differ: only in zero-shot {only_zs}, only in fine-tuned "
                        f"{only_ft} (both must come from the same architecture and method)")
    selected = set(theta_ft) if keys is None else set(keys)
    missing = sorted(selected - set(theta_ft))
    if missing:
        raise WiseError(f"keys to interpolate are not in the state dicts: {missing[:5]}")
    out: dict[str, torch.Tensor] = {}
    for name, ft in theta_ft.items():
        zs = theta_zs[name]
        if zs.shape != ft.shape:
            raise WiseError(f"shape mismatch for {name}: {tuple(zs.shape)} vs {tuple(ft.shape)}")
        if name not in selected or not ft.is_floating_point() or alpha == 1.0:
            out[name] = ft.clone()
        elif alpha == 0.0:
            out[name] = zs.to(ft.dtype).clone()
        else:
            out[name] = torch.lerp(zs.to(ft.dtype), ft, alpha)  # (1 − α)·zs + α·ft
    return out
