"""``python -m search.bench --only ddp``: N DDP workers follow the one-worker trajectory.

For every trainable method of the registry, the same short run (micro CLIP, global batch 8, a few
steps) is trained once in this process (one worker) and once by ``workers`` processes joined in a
gloo process group (``torch.multiprocessing``, no Ray), each wrapping the step module in
``DistributedDataParallel`` as Ray Train's ``prepare_model`` does. The loop shards every global
batch itself, so the union of the workers' step-t batches is the one-worker step-t batch; the
contrastive terms gather the global batch (open_clip's ``ClipLoss``), and DDP averages the
gradients. A step's loss of the N-worker run is the mean of the workers' losses (per-sample terms
are per-worker means; contrastive terms are the global loss on every worker). The steps' losses
check every update but the last; the final weights are checked through what the model computes
with them (the logits and both towers' features on fixed val images and class prompts), not
weight by weight: the key bias of attention has a gradient of exactly zero in exact arithmetic,
so AdamW, which normalises every gradient, drives it with rounding noise in any two runs.

Training images use the deterministic eval transform: random crops are drawn from each process's
global RNG, so N processes would crop differently from one (augmentation is not yet a function of
the sample index, unlike the templates and the batches). Printed per method:
``METHOD max_rel_step_loss_diff=X max_rel_output_diff=Y``; the exit status is 1 if any X > 1e-4.
:func:`compare_ddp` is what ``tests/test_ddp_methods.py`` asserts on.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

#: every step's loss (and the final trained weights) must agree within this relative difference
RTOL = 1e-4
#: the short run each method trains: global batch 8, 2 epochs of at most 4 steps
COMMON: dict[str, Any] = dict(lr=1e-3, weight_decay=0.0, epochs=2, batch_size=8, warmup_steps=0,
                              grad_clip=1.0, seed=0, precision="fp32", max_steps_per_epoch=4)
#: method settings that keep the run short (LP-FT's probe stage, CE-SWA's averaged epochs)
SHORT: dict[str, dict[str, Any]] = {"lp-ft": {"lp_epochs": 1}, "ce-swa": {"swa_epochs": 1}}
MODEL = "micro-clip-16"


@dataclass(frozen=True)
class Case:
    """One method (with optional non-default params) to compare; ``name`` labels the output."""

    method: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.method}[{extra}]" if extra else self.method

    def run_params(self) -> dict[str, Any]:
        return {**COMMON, **SHORT.get(self.method, {}), **dict(self.params)}


@dataclass
class DdpComparison:
    """One case's trajectories: per-step losses of one worker and of N (mean over workers)."""

    case: str
    steps_one: list[float]
    steps_many: list[float]
    max_rel_step_loss_diff: float
    max_rel_output_diff: float
    sharded: bool     # at every step the workers' samples were equal shares of the 1-worker batch

    @property
    def ok(self) -> bool:
        return (len(self.steps_one) == len(self.steps_many) and len(self.steps_one) > 0
                and self.sharded and self.max_rel_step_loss_diff <= RTOL
                and self.max_rel_output_diff <= RTOL)


def trainable_cases() -> list[Case]:
    """One case per trainable method of the registry."""
    from trainables.methods import METHODS
    return [Case(name) for name in sorted(METHODS) if not METHODS[name].trains_nothing]


def run_case(case: Case, spec: str, wrap: Callable[[nn.Module], nn.Module]
             ) -> tuple[list[float], list[float], list[list[int]]]:
    """Train ``case`` with the one loop in this process's world; returns (this process's loss
    per step, the outputs of the final weights θ_ft on a fixed probe, the training-set indices
    of this process's samples at each step)."""
    from search.runspec import RunSpec
    from search.tune.trial import prepare
    from trainables.loop import train

    setup = RunSpec(method=case.method, model=MODEL, pretrained=None, data=spec,
                    base_params=case.run_params())
    parts = prepare(setup, {}, "cpu")
    deterministic = parts.bundle.preprocess_val          # see the module docstring
    parts.data.train.transform = deterministic
    for anchors in parts.data.anchors.values():
        anchors.transform = deterministic
    steps: list[float] = []
    seen: list[list[int]] = []

    def record(_module: nn.Module, inputs: tuple, terms: dict[str, torch.Tensor]) -> None:
        steps.append(float(sum(t.detach() for t in terms.values())))
        seen.append(inputs[0].sample_indices().tolist())

    def wrap_and_record(module: nn.Module) -> nn.Module:
        wrapped = wrap(module)
        wrapped.register_forward_hook(record)
        return wrapped

    train(parts.model, parts.method, parts.ctx, parts.data, parts.train_cfg,
          wrap_module=wrap_and_record)
    return steps, probe(parts), seen


@torch.no_grad()
def probe(parts: Any) -> list[float]:
    """What θ_ft computes: head logits and image features of the first 8 val images, and the
    text features of every class prompt, flattened."""
    from trainables.methods.common import CLASS_PROMPT

    model = parts.model
    model.load_state_dict(parts.method.final_state_dict(model))
    model.eval()
    images = torch.stack([parts.data.val[i][0] for i in range(min(8, len(parts.data.val)))])
    tokens = parts.bundle.tokenizer([CLASS_PROMPT.format(c) for c in parts.ctx.classnames])
    out = [model(images), model.image_features(images), model.text_features(tokens)]
    return torch.cat([t.flatten() for t in out]).tolist()


def _worker(rank: int, world_size: int, rendezvous: str, spec: str, cases: list[Case],
            out: str) -> None:
    """One DDP process: join the gloo group, run every case, write its losses (and rank 0 the
    weights) under ``out``."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world_size)
    try:
        for i, case in enumerate(cases):
            steps, outputs, seen = run_case(case, spec, DistributedDataParallel)
            Path(out, f"{i}-rank{rank}.json").write_text(json.dumps(
                {"steps": steps, "outputs": outputs, "seen": seen}))
    finally:
        dist.destroy_process_group()


def _max_rel(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)), default=float("inf"))


def _sharded(ranks: list[list[list[int]]], one: list[list[int]]) -> bool:
    """Whether at every step the ranks saw equal, disjoint shares whose union is the one-worker
    batch (``ranks[r][t]``: rank r's sample indices at step t)."""
    if any(len(r) != len(one) for r in ranks):
        return False
    for t, batch in enumerate(one):
        shares = [r[t] for r in ranks]
        if (len({len(s) for s in shares}) != 1
                or sorted(i for s in shares for i in s) != sorted(batch)):
            return False
    return True


def _rel_norm(many: list[float], one: list[float]) -> float:
    """‖many − one‖ / ‖one‖."""
    a, b = torch.tensor(many, dtype=torch.float64), torch.tensor(one, dtype=torch.float64)
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def compare_ddp(spec: str | Path, cases: list[Case] | None = None, workers: int = 2
                ) -> list[DdpComparison]:
    """Run every case with one worker (here) and with ``workers`` DDP processes (gloo, CPU) at
    the same global batch; returns the per-step comparison of each."""
    cases = trainable_cases() if cases is None else cases
    spec = str(Path(spec).resolve())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = [run_case(case, spec, lambda m: m) for case in cases]
    finally:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="ddp-compare-") as tmp:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        torch.multiprocessing.start_processes(
            _worker, args=(workers, str(Path(tmp, "rendezvous")), spec, cases, tmp),
            nprocs=workers, start_method="spawn")
        out = []
        for i, (case, (one_steps, one_outputs, one_seen)) in enumerate(zip(cases, reference)):
            ranks = [json.loads(Path(tmp, f"{i}-rank{r}.json").read_text())
                     for r in range(workers)]
            many = [sum(vals) / workers for vals in zip(*(r["steps"] for r in ranks))]
            if any(len(r["steps"]) != len(one_steps) for r in ranks):
                many = []
            out.append(DdpComparison(
                case.name, one_steps, many, _max_rel(many, one_steps) if many else float("inf"),
                max(_rel_norm(r["outputs"], one_outputs) for r in ranks),
                _sharded([r["seen"] for r in ranks], one_seen)))
    return out


def main(spec: Path) -> int:
    """Print one line per trainable method; 1 if any differs by more than :data:`RTOL`."""
    results = compare_ddp(spec)
    for r in results:
        print(f"{r.case} max_rel_step_loss_diff={r.max_rel_step_loss_diff:.2e} "
              f"max_rel_output_diff={r.max_rel_output_diff:.2e}", flush=True)
    bad = [r.case for r in results if not r.ok]
    if bad:
        print(f"DDP trajectories differ from one worker's by more than {RTOL:g} for {bad}")
    return 1 if bad else 0
