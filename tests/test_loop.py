"""The one training loop, on real data files: it reduces every method's loss, resumes exactly,
and fails loudly on a non-finite loss."""
from __future__ import annotations

import copy

import pytest
import torch

from search.bench.tiny_data import write_tiny_spec
from search.runspec import RunSpec
from search.tune.trial import prepare
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.loop import NonFiniteLossError, train
from trainables.methods import METHODS, Batch

TRAINING = sorted(m for m, cls in METHODS.items() if not cls.trains_nothing)


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    return write_tiny_spec(tmp_path_factory.mktemp("tiny"), per_class=8)


def _setup(spec, method: str, **params) -> RunSpec:
    base = dict(lr=3e-3, weight_decay=0.0, epochs=4, batch_size=8, warmup_steps=0, seed=0)
    base.update(params)
    return RunSpec(method=method, model="micro-clip-16", pretrained=None, data=str(spec),
                   base_params=base)


def _fixed_batch(parts) -> Batch:
    images = torch.stack([parts.data.train[i][0] for i in range(0, 32, 2)])
    labels = torch.tensor([parts.data.train[i][1] for i in range(0, 32, 2)])
    batch = Batch(labels=labels, images=images)
    for name in parts.method.anchor_sets:
        ds = parts.data.anchors[name]
        items = [ds[i] for i in range(8)]
        batch.anchors[name] = (torch.stack([im for im, _ in items]),
                               parts.bundle.tokenizer([c for _, c in items]))
    return batch


def _loss(parts, batch: Batch) -> float:
    """The method's loss on a fixed batch, with fixed randomness (FLYP's template draw)."""
    torch.manual_seed(123)
    parts.model.eval()
    with torch.no_grad():
        parts.method.setup(parts.model, parts.ctx)
        stage = parts.method.stages()[-1]
        if stage.cache_features:
            batch = Batch(labels=batch.labels, features=parts.model.image_features(batch.images),
                          anchors=batch.anchors)
        return float(sum(parts.method.loss(parts.model, batch, parts.ctx).values()))


@pytest.mark.parametrize("method", TRAINING)
def test_loop_reduces_training_loss(tiny_spec, method):
    torch.manual_seed(0)
    parts = prepare(_setup(tiny_spec, method), {})
    batch = _fixed_batch(parts)
    before = _loss(parts, batch)
    reports = train(parts.model, parts.method, parts.ctx, parts.data, parts.train_cfg,
                    eval_transform=parts.bundle.preprocess_val)
    after = _loss(parts, batch)
    assert len(reports) == sum(s.epochs or parts.train_cfg.epochs
                               for s in parts.method.stages())
    assert all(r.steps > 0 for r in reports)
    assert after < before, f"{method}: loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("method", ["ft", "lp-ft", "ce-swa", "flyp", "arf"])
def test_resume_from_checkpoint_matches_uninterrupted_run(tiny_spec, tmp_path, method):
    """Stop after every epoch boundary's checkpoint, resume in a fresh model: same weights
    (FLYP's templates and ARF's anchor batches are drawn as in the uninterrupted run)."""
    setup = _setup(tiny_spec, method, epochs=3, lr=1e-3)
    if method == "ce-swa":
        setup = _setup(tiny_spec, method, epochs=3, lr=1e-3, swa_epochs=2)
    full = prepare(setup, {})
    train(full.model, full.method, full.ctx, full.data, full.train_cfg,
          eval_transform=full.bundle.preprocess_val)
    expected = full.method.final_state_dict(full.model)

    first = prepare(setup, {})
    saved = {}

    class Stop(Exception):
        pass

    def on_epoch_end(report, snapshot):
        if report.epoch == 2:
            save_checkpoint(tmp_path / "ckpt", first.model.state_dict(), {"m": method},
                            snapshot())
            raise Stop
    with pytest.raises(Stop):
        train(first.model, first.method, first.ctx, first.data, first.train_cfg,
              eval_transform=first.bundle.preprocess_val, on_epoch_end=on_epoch_end)

    second = prepare(setup, {})
    state, config, loop_state = load_checkpoint(tmp_path / "ckpt")
    assert config == {"m": method} and loop_state.global_epoch == 2
    second.model.load_state_dict(state)
    reports = train(second.model, second.method, second.ctx, second.data, second.train_cfg,
                    eval_transform=second.bundle.preprocess_val, resume=loop_state)
    assert [r.epoch for r in reports][0] == 3
    got = second.method.final_state_dict(second.model)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=f"{method}: {key} differs")
    saved.clear()


def test_non_finite_loss_raises(tiny_spec, monkeypatch):
    parts = prepare(_setup(tiny_spec, "ft", epochs=1), {})
    original = type(parts.method).loss

    def nan_loss(self, model, batch, ctx):
        terms = original(self, model, batch, ctx)
        return {k: v * float("nan") for k, v in terms.items()}
    monkeypatch.setattr(type(parts.method), "loss", nan_loss)
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        train(parts.model, parts.method, parts.ctx, parts.data, parts.train_cfg)


def test_reference_model_is_never_trained(tiny_spec):
    parts = prepare(_setup(tiny_spec, "car-ft", epochs=1), {})
    before = copy.deepcopy(parts.ctx.reference.state_dict())
    train(parts.model, parts.method, parts.ctx, parts.data, parts.train_cfg)
    after = parts.ctx.reference.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in parts.ctx.reference.parameters())
    assert not parts.ctx.reference.training
