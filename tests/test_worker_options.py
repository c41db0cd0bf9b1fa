"""The trial worker without Ray, and the loop's GPU-minded options on CPU.

``search.tune.trial.run_worker`` with a :class:`~search.tune.trial.LocalSession` runs a whole trial
(training, per-epoch ID val, WiSE selection, report) in this process; ``TrainConfig.compile``
compiles the training step with ``torch.compile`` and trains the same trajectory as eager; the
CUDA-only settings (fused AdamW, TF32, loader workers) leave a CPU run's loader as it was.
"""
from __future__ import annotations

import pytest
import torch

from search.bench.tiny_data import write_tiny_spec
from search.result import FINAL, OBJECTIVE
from search.runspec import RunSpec
from search.tune.trial import (
    LocalSession,
    StudySetup,
    prepare,
    run_worker,
    setup_dict,
)
from trainables.loop import default_loader, train
from trainables.sampling import GlobalBatchSampler


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    return write_tiny_spec(tmp_path_factory.mktemp("opts"), per_class=8)


def _setup(spec, method: str = "ft", **params) -> RunSpec:
    base = dict(lr=1e-3, weight_decay=0.0, epochs=2, batch_size=8, warmup_steps=0, seed=0,
                max_steps_per_epoch=2)
    base.update(params)
    return RunSpec(method=method, model="micro-clip-16", pretrained=None, data=str(spec),
                   wise_grid=(0.0, 0.5, 1.0), base_params=base)


def test_run_worker_without_ray_reports_every_epoch_and_the_final_result(tiny_spec):
    session = LocalSession(torch.device("cpu"))
    run_worker({"params": {}, "setup": setup_dict(StudySetup(_setup(tiny_spec, "flyp"))),
                "run_name": "local"}, session)
    *epochs, final = session.reports
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(OBJECTIVE in r and "time/epoch_train_s" in r for r in epochs)
    assert "time/setup_s" in epochs[0] and "time/setup_s" not in epochs[1]
    assert final[FINAL] == 1.0 and final["wise_alpha"] in (0.0, 0.5, 1.0)
    assert final["time/wise_select_s"] >= 0 and "ft/ood/noisy/acc" in final


def test_compiled_step_trains_the_eager_trajectory(tiny_spec):
    def losses(compile_: bool) -> list[float]:
        torch.manual_seed(0)
        parts = prepare(_setup(tiny_spec, compile=compile_), {}, "cpu")
        parts.data.train.transform = parts.bundle.preprocess_val    # deterministic images
        torch._dynamo.reset()
        reports = train(parts.model, parts.method, parts.ctx, parts.data, parts.train_cfg)
        return [r.train_loss for r in reports]

    eager, compiled = losses(False), losses(True)
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_cpu_loader_is_unchanged(tiny_spec):
    parts = prepare(_setup(tiny_spec), {}, "cpu")
    assert parts.train_cfg.num_workers == -1 and parts.evaluator.num_workers == 0   # auto: 0
    sampler = GlobalBatchSampler(len(parts.data.train), 8, seed=0)
    loader = default_loader(parts.data.train, sampler)
    assert loader.num_workers == 0 and loader.prefetch_factor is None and not loader.pin_memory
    workers = default_loader(parts.data.train, sampler, None, 1)
    assert workers.prefetch_factor == 4 and workers.persistent_workers
