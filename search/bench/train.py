"""Benchmark figures 1 (training-step throughput) and 5 (peak training memory per method).

Figure 1 runs the project's loop (``trainables.loop.train`` with FT: ``_StepModule`` +
``Method.loss`` + AdamW + scheduler + clipping) and a bare PyTorch loop written here on the same
model, batch, optimizer and precision, both fed from one in-memory ``TensorDataset``; rounds
alternate the order (ours, bare / bare, ours) so that load drift from other processes cancels.
Figure 5 trains each method for a few steps in a fresh subprocess
(``python -m search.bench.train memory …``) and reads its peak RSS (or CUDA peak allocation).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from search.bench.core import REPO, Bench, Figure, Target

#: --quick measures a few methods only (each costs a fresh process): FT, a two-stage one and a
#: teacher-based one.
QUICK_MEMORY_METHODS = ("ft", "lp-ft", "car-ft")
CLASSNAMES = ["cat", "dog", "car", "tree", "ship", "bird", "frog", "horse", "truck", "plane"]


@dataclass
class InMemoryTask:
    """The part of :class:`trainables.data.TaskData` that ``train()`` reads: ``train`` (any
    map-style dataset of (image, label)), ``anchors`` (ARF only) and ``val`` (cached-feature
    stages only)."""

    train: Dataset
    anchors: dict[str, Dataset] = field(default_factory=dict)
    val: Any = None


@dataclass(frozen=True)
class ThroughputCase:
    model: str
    image_size: int
    batch: int
    device: str
    precision: str          # what both loops use: fp32 (CPU) or bf16 autocast (CUDA)
    rounds: int
    warmup: int             # untimed steps per loop and round (fresh optimizer each round)
    timed: int
    compile: bool = False   # torch.compile: the loop's TrainConfig.compile, the bare model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _StartTimer(nn.Module):
    """Wraps the loop's step module (through ``wrap_module``) and notes when timed steps begin."""

    def __init__(self, inner: nn.Module, warmup: int, device: torch.device):
        super().__init__()
        self.inner, self.warmup, self.device = inner, warmup, device
        self.calls, self.start = 0, 0.0

    @torch.compiler.disable    # outside the compiled step: no graph guard on the step count
    def _tick(self) -> None:
        if self.calls == self.warmup:
            _sync(self.device)
            self.start = time.perf_counter()
        self.calls += 1

    def forward(self, batch):
        self._tick()
        return self.inner(batch)


def _ours(model, method, ctx, dataset: Dataset, case: ThroughputCase) -> float:
    """Seconds per step of ``trainables.loop.train`` over the timed steps."""
    from trainables.config import TrainConfig
    from trainables.loop import train
    device = torch.device(case.device)
    cfg = TrainConfig(lr=1e-5, weight_decay=0.1, epochs=1, batch_size=case.batch, warmup_steps=0,
                      grad_clip=1.0, precision="auto", compile=case.compile,
                      max_steps_per_epoch=case.warmup + case.timed)
    timer: list[_StartTimer] = []
    end: list[float] = []

    def wrap(module: nn.Module) -> nn.Module:
        timer.append(_StartTimer(module, case.warmup, device))
        return timer[-1]

    def on_epoch_end(report, snapshot) -> None:
        _sync(device)
        end.append(time.perf_counter())

    train(model, method, ctx, InMemoryTask(dataset), cfg, device=device, wrap_module=wrap,
          on_epoch_end=on_epoch_end)
    return (end[0] - timer[0].start) / case.timed


def _bare(model: nn.Module, trains: Callable[[str], bool], dataset: Dataset,
          case: ThroughputCase) -> float:
    """Seconds per step of a plain PyTorch loop: forward, CE, backward, clip, AdamW, cosine."""
    device = torch.device(case.device)
    model.to(device).train()
    for name, p in model.named_parameters():
        p.requires_grad_(trains(name))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1,   # fused on CUDA, as the loop
                            fused=True if device.type == "cuda" else None)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=case.warmup + case.timed)
    loader = DataLoader(dataset, batch_size=case.batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    forward = torch.compile(model) if case.compile else model
    start = 0.0
    for step, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        if step == case.warmup:
            _sync(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.precision == "bf16"):
            loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    _sync(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return (time.perf_counter() - start) / case.timed


def compare_loops(case: ThroughputCase) -> tuple[list[float], list[float]]:
    """Per-round seconds per step of (ours, bare), alternating which loop runs first."""
    from trainables.config import TrainConfig
    from trainables.heads import build_classifier
    from trainables.methods import MethodContext, get_method_class
    from trainables.models import create_clip
    device = torch.device(case.device)
    torch.manual_seed(0)
    bundle = create_clip(case.model, pretrained=None, device=device)
    model = build_classifier(bundle.clip, bundle.tokenizer, CLASSNAMES, ["a photo of a {}."],
                             device)
    method = get_method_class("ft")(None, TrainConfig())
    ctx = MethodContext(CLASSNAMES, ["a photo of a {}."], ["a photo of a {}."], bundle.tokenizer,
                        device, float(bundle.clip.logit_scale.detach().exp()))
    n = case.batch * (case.warmup + case.timed)
    gen = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(n, 3, case.image_size, case.image_size, generator=gen),
                            torch.randint(0, len(CLASSNAMES), (n,), generator=gen))
    ours, bare = [], []
    for r in range(case.rounds):
        order = ("ours", "bare") if r % 2 == 0 else ("bare", "ours")
        for which in order:
            if which == "ours":
                ours.append(_ours(model, method, ctx, dataset, case))
            else:
                bare.append(_bare(model, method.trains, dataset, case))
    return ours, bare


def throughput(bench: Bench) -> Figure:
    """Figure 1: steps/s of our loop over a bare loop (CPU; a CUDA case when a GPU exists)."""
    cpu = (ThroughputCase("micro-clip-16", 16, 32, "cpu", "fp32", 2, 2, 20) if bench.quick else
           ThroughputCase("ViT-S-32", 224, 32, "cpu", "fp32", 4, 1, 5))   # ±15 % per round here
    cases = [cpu]
    if torch.cuda.is_available():
        cases.append(ThroughputCase("ViT-B-16", 224, 128, "cuda", "bf16", 2, 3, 10)
                     if not bench.quick else
                     ThroughputCase("micro-clip-16", 16, 128, "cuda", "bf16", 2, 3, 20))
    fig = Figure(1, "Training-step throughput: `trainables.loop.train` (FT) vs a bare PyTorch loop",
                 ["device", "model", "batch, px", "precision", "ours s/step", "bare s/step",
                  "ours img/s", "ours / bare throughput"])
    for case in cases:
        ours, bare = compare_loops(case)
        o, b = sum(ours) / len(ours), sum(bare) / len(bare)
        ratio = b / o
        fig.rows.append([case.device, case.model, f"{case.batch}, {case.image_size}",
                         case.precision, f"{o:.4g}", f"{b:.4g}", f"{case.batch / o:.1f}",
                         f"{ratio:.3f}"])
        fig.targets.append(Target(f"ours ≥ 0.95 × bare ({case.device}, {case.model})",
                                  f"{ratio:.3f} (rounds: ours {_fmt(ours)} s, bare {_fmt(bare)} s)",
                                  None if bench.quick else ratio >= 0.95))
    if not torch.cuda.is_available():
        fig.rows.append(["cuda", "ViT-B-16", "128, 224", "bf16", "not measured: no GPU", "", "",
                         ""])
    fig.notes.append(f"{cpu.rounds} alternating rounds × ({cpu.warmup} warm-up + {cpu.timed} "
                     "timed steps) per loop; random init, random in-memory images; both loops "
                     "train the image tower + head with AdamW (wd 0.1), cosine lr, grad clip 1.")
    return fig


def _fmt(values: list[float]) -> str:
    return "/".join(f"{v:.3g}" for v in values)


# --- figure 5: memory ---------------------------------------------------------------------------
def _spec_with_retrieved(spec: Path, work: Path) -> Path:
    """``spec``, or a copy beside symlinks to its folder whose ``retrieved`` anchors are the
    candidate pairs (ARF's memory depends on the anchor batch shape, not on retrieval quality)."""
    import yaml
    raw = yaml.safe_load(spec.read_text())
    anchors = raw.get("anchors") or {}
    if "retrieved" in anchors or "candidates" not in anchors:
        return spec
    out = work / "memory-spec"
    out.mkdir(parents=True, exist_ok=True)
    for entry in spec.parent.iterdir():
        if entry != spec and not (out / entry.name).exists():
            (out / entry.name).symlink_to(entry)
    raw["anchors"] = {**anchors, "retrieved": anchors["candidates"]}
    (out / "spec.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return out / "spec.yaml"


def memory(bench: Bench) -> Figure:
    """Figure 5: peak training memory of every method relative to FT (one subprocess each)."""
    from search.bench.report import ORDER
    from trainables.methods import METHODS
    methods = [m for m in ORDER if m in METHODS and not METHODS[m].trains_nothing and
               (not bench.quick or m in QUICK_MEMORY_METHODS)]
    batch, steps = 128, 3
    spec = _spec_with_retrieved(bench.data(), bench.work)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {}
    for m in methods:
        cmd = [sys.executable, "-m", "search.bench.train", "memory", "--method", m,
               "--model", bench.model, "--data", str(spec), "--batch", str(batch),
               "--steps", str(steps), "--device", device]
        if bench.pretrained:
            cmd += ["--pretrained", bench.pretrained]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            raise RuntimeError(f"memory run of {m} failed:\n{proc.stderr[-3000:]}")
        results[m] = json.loads(proc.stdout.strip().splitlines()[-1])
    unit = "CUDA max allocated" if device == "cuda" else "peak RSS increase"
    fig = Figure(5, "Peak training memory per method, relative to FT",
                 ["method", f"{unit} (MB)", "× FT", "reference model", "step s"])
    ft = max(results["ft"]["peak_mb"], 1.0)   # MB; guards a degenerate (micro) measurement
    worst = max((m for m in methods if METHODS[m].uses_reference),
                key=lambda m: results[m]["peak_mb"], default=None)
    for m in methods:
        r = results[m]
        fig.rows.append([m, f"{r['peak_mb']:.0f}", f"{r['peak_mb'] / ft:.2f}",
                         "frozen, no grad" if METHODS[m].uses_reference else "–",
                         f"{r['step_s']:.2f}"])
    over = [m for m in methods if results[m]["peak_mb"] > 1.3 * ft]
    fig.targets.append(Target("every method ≤ 1.3 × FT", "over: " + (", ".join(
        f"{m} {results[m]['peak_mb'] / ft:.2f}×" for m in over) or "none"),
        None if bench.quick else not over))
    if worst:
        fig.targets.append(Target("teacher-based methods ≤ 1.3 × FT",
                                  f"highest {worst} {results[worst]['peak_mb'] / ft:.2f}×",
                                  None if bench.quick else results[worst]["peak_mb"] <= 1.3 * ft))
    fig.notes.append(f"{bench.model} ({'pretrained' if bench.pretrained else 'random init'}), "
                     f"batch {batch}, {steps} steps, paper-default hyperparameters "
                     "(search.bench.report.defaults); one fresh process per method; the increase "
                     "is measured from after imports to the end of training, so it includes the "
                     "model, the frozen reference, gradients, AdamW state and activations. ARF "
                     "draws two anchor batches of the same size beside each task batch.")
    return fig


def _status_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def _reset_peak_rss() -> int:
    """Reset the peak RSS (Linux: ``5`` into ``/proc/self/clear_refs``) and return the current RSS
    in KiB, so that the peak read later belongs to what ran after this point. Where that is
    unavailable, the peak so far (``ru_maxrss``) is the baseline."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kb("VmRSS")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux


def _peak_rss_kb() -> int:
    try:
        return _status_kb("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _memory_worker(args: argparse.Namespace) -> dict[str, float]:
    from search.bench.report import defaults
    from search.runspec import RunSpec
    from search.tune.trial import prepare
    from trainables.data import LabeledImages
    from trainables.loop import train
    from trainables.spec import load_spec
    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device(args.device)
    load_spec(args.data)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base_kb = _reset_peak_rss()
    params = {**defaults(args.method), "epochs": 1, "batch_size": args.batch,
              "warmup_steps": 0, "max_steps_per_epoch": args.steps, "seed": 0}
    setup = RunSpec(method=args.method, model=args.model, pretrained=args.pretrained,
                    data=str(args.data))
    parts = prepare(setup, params, device)
    train_images = parts.data.train
    data = replace(parts.data, train=LabeledImages(train_images.samples[:args.batch * args.steps],
                                                   train_images.transform))
    start = time.perf_counter()
    reports = train(parts.model, parts.method, parts.ctx, data, parts.train_cfg, device=device,
                    eval_transform=parts.bundle.preprocess_val)
    steps = sum(r.steps for r in reports)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = (_peak_rss_kb() - base_kb) / 1024
    return {"peak_mb": peak_mb, "steps": steps, "step_s": seconds / max(steps, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.bench.train",
                                description="figure 5's per-method memory run (one process)")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--method", required=True)
    m.add_argument("--model", required=True)
    m.add_argument("--pretrained", default=None)
    m.add_argument("--data", type=Path, required=True)
    m.add_argument("--batch", type=int, default=128)
    m.add_argument("--steps", type=int, default=3)
    m.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    print(json.dumps(_memory_worker(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
