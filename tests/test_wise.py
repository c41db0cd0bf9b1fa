"""WiSE-FT interpolation (trainables/wise.py): exact end points, integer buffers, errors, keys."""
from __future__ import annotations

import copy

import pytest
import torch

from trainables.wise import WiseError, interpolate


@pytest.fixture
def zs_ft(micro_classifier):
    """(zero-shot model, a fine-tuned copy with perturbed image tower and head)."""
    zs = micro_classifier.eval()
    ft = copy.deepcopy(zs)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in ft.named_parameters():
            if n.startswith(("clip.visual.", "head.")):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return zs, ft


def logits_at(model, state, images):
    model = copy.deepcopy(model)
    model.load_state_dict(state)
    with torch.no_grad():
        return model(images)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_end_points_reproduce_models_exactly(zs_ft, tiny_task, alpha):
    zs, ft = zs_ft
    out = interpolate(zs.state_dict(), ft.state_dict(), alpha)
    target = zs if alpha == 0.0 else ft
    with torch.no_grad():
        expected = target(tiny_task.images)
    assert torch.equal(logits_at(zs, out, tiny_task.images), expected)


def test_midpoint_is_linear(zs_ft):
    zs, ft = zs_ft
    out = interpolate(zs.state_dict(), ft.state_dict(), 0.3)
    for k, v in out.items():
        torch.testing.assert_close(v, 0.7 * zs.state_dict()[k] + 0.3 * ft.state_dict()[k])


def test_integer_tensors_copied_from_finetuned():
    zs = {"w": torch.zeros(3), "steps": torch.tensor([1, 2], dtype=torch.int64)}
    ft = {"w": torch.ones(3), "steps": torch.tensor([7, 9], dtype=torch.int64)}
    out = interpolate(zs, ft, 0.5)
    torch.testing.assert_close(out["w"], torch.full((3,), 0.5))
    assert out["steps"].dtype == torch.int64 and torch.equal(out["steps"], ft["steps"])


def test_mismatched_keys_raise_with_the_keys_named():
    zs = {"a": torch.zeros(2), "only_zs": torch.zeros(1)}
    ft = {"a": torch.ones(2), "only_ft": torch.ones(1)}
    with pytest.raises(WiseError, match="only_zs") as err:
        interpolate(zs, ft, 0.5)
    assert "only_ft" in str(err.value)


def test_mismatched_shapes_raise():
    with pytest.raises(WiseError, match="shape"):
        interpolate({"a": torch.zeros(2)}, {"a": torch.zeros(3)}, 0.5)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval_raises(alpha):
    with pytest.raises(WiseError, match="alpha"):
        interpolate({"a": torch.zeros(1)}, {"a": torch.ones(1)}, alpha)


def test_keys_restrict_interpolation(zs_ft):
    zs, ft = zs_ft
    zs_sd, ft_sd = zs.state_dict(), ft.state_dict()
    keys = [k for k in zs_sd if k.startswith("head.")]
    out = interpolate(zs_sd, ft_sd, 0.5, keys=keys)
    for k in zs_sd:
        if k in keys:
            torch.testing.assert_close(out[k], 0.5 * (zs_sd[k] + ft_sd[k]))
        else:
            assert torch.equal(out[k], ft_sd[k])
    with pytest.raises(WiseError, match="not in the state dicts"):
        interpolate(zs_sd, ft_sd, 0.5, keys=["no.such.key"])
