"""A 2-worker DDP trial (CPU, gloo) under Ray Train follows the 1-worker loss trajectory at the same
global batch (``ft``; every method is compared without Ray in ``test_ddp_methods.py``).

The two-worker run uses the production path of :func:`search.tune.trial.train_worker`: Ray's
``TorchTrainer`` with ``trainables.loop.train(wrap_module=prepare_model,
make_loader=default_loader)``, ``batch_size`` = the global batch. The loop's
``GlobalBatchSampler`` gives rank r of 2 the r-th half of each global batch of the one-worker
order (a permutation seeded by (seed, epoch)), so the union of the two ranks' step-t batches is the
one-worker step-t batch: the step losses agree up to float rounding (DDP averages the ranks'
gradients, which equals the gradient of the global mean loss). The one-worker reference is the
plain single-process loop. Training images use the deterministic eval transform (random crops
would be drawn in a different order by two processes).

Tolerance: every step's loss within 1e-4 relative (measured: ~1e-7, the all-reduce summation
order), and the epoch means within 1e-4.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from search.bench.tiny_data import write_tiny_spec
from search.runspec import RunSpec
from search.tune.trial import StudySetup, prepare
from trainables.loop import default_loader, train

GLOBAL_BATCH = 8
PARAMS = dict(lr=1e-3, weight_decay=0.0, epochs=3, warmup_steps=0, grad_clip=1.0, seed=0)
RTOL = 1e-4


def _setup(spec: Path, batch_size: int) -> RunSpec:
    return RunSpec(method="ft", model="micro-clip-16", pretrained=None, data=str(spec),
                   base_params={**PARAMS, "batch_size": batch_size})


def _run(setup: RunSpec, wrap_module, make_loader=default_loader
         ) -> tuple[list[float], list[float]]:
    """Train with the one loop; returns (per-step losses of this process, epoch means)."""
    torch.set_num_threads(1)
    parts = prepare(setup, {}, "cpu")
    parts.data.train.transform = parts.bundle.preprocess_val      # deterministic images
    steps: list[float] = []
    loss_fn = parts.method.loss

    def recording_loss(model, batch, ctx):
        terms = loss_fn(model, batch, ctx)
        steps.append(float(sum(t.detach() for t in terms.values())))
        return terms

    parts.method.loss = recording_loss
    reports = train(parts.model, parts.method, parts.ctx, parts.data, parts.train_cfg,
                    wrap_module=wrap_module, make_loader=make_loader)
    return steps, [r.train_loss for r in reports]


def ddp_worker(config: dict) -> None:
    """Ray Train worker: the production loader/model wrapping; writes its losses to a file."""
    import ray.train
    import ray.train.torch

    steps, epochs = _run(StudySetup.from_dict(config["setup"]).run, ray.train.torch.prepare_model)
    rank = ray.train.get_context().get_world_rank()
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps({"steps": steps,
                                                                   "epochs": epochs}))


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    return write_tiny_spec(tmp_path_factory.mktemp("ddp"), per_class=8)   # 32 train images


@pytest.mark.slow
def test_two_workers_follow_the_one_worker_trajectory(tiny_spec, tmp_path):
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from search.tune.trial import setup_dict

    ref_steps, ref_epochs = _run(_setup(tiny_spec, GLOBAL_BATCH), lambda m: m)
    assert len(ref_steps) == 3 * 32 // GLOBAL_BATCH

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}})
    try:
        TorchTrainer(
            ddp_worker,
            train_loop_config={"setup": setup_dict(StudySetup(_setup(tiny_spec, GLOBAL_BATCH))),
                               "out": str(tmp_path)},
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ray.train.ScalingConfig(num_workers=2, use_gpu=False),
            run_config=ray.train.RunConfig(name="ddp", storage_path=str(tmp_path / "ray")),
        ).fit()
    finally:
        ray.shutdown()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    steps = [(a + b) / 2 for a, b in zip(ranks[0]["steps"], ranks[1]["steps"])]
    epochs = ranks[0]["epochs"]          # the loop reports the mean over the workers
    assert ranks[1]["epochs"] == pytest.approx(epochs, rel=1e-12)
    assert len(steps) == len(ref_steps) and ranks[0]["steps"] != ranks[1]["steps"]
    worst = max(abs(a - b) / abs(b) for a, b in zip(steps, ref_steps))
    print(f"\n1 worker : {[round(x, 6) for x in ref_steps]}\n2 workers: "
          f"{[round(x, 6) for x in steps]}\nmax relative step difference {worst:.2e}")
    assert steps == pytest.approx(ref_steps, rel=RTOL)
    assert epochs == pytest.approx(ref_epochs, rel=RTOL)
    assert ref_steps[-1] < ref_steps[0]                    # it trained


def test_grad_checkpointing_is_wired_and_exact(tiny_spec):
    """``grad_checkpointing: true`` turns on open_clip's activation checkpointing in both towers
    (recomputed in backward), and the losses are those of a run without it."""
    def run(flag: bool) -> tuple[list[float], object]:
        setup = _setup(tiny_spec, GLOBAL_BATCH)
        setup.base_params.update(grad_checkpointing=flag, epochs=1)
        torch.manual_seed(0)
        steps, _ = _run(setup, lambda m: m)
        return steps, setup

    plain, _ = run(False)
    checkpointed, setup = run(True)
    parts = prepare(setup, {}, "cpu")
    assert parts.model.clip.visual.transformer.grad_checkpointing
    assert parts.model.clip.transformer.grad_checkpointing
    assert checkpointed == pytest.approx(plain, rel=1e-5)
