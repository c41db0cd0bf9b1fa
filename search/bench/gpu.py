"""``python -m search.bench --only gpu``: the GPU check, one command.

Made to run on a bare GPU machine that has torch, torchvision, timm, transformers and
safetensors, no package registry, and the project's tree carried with the few wheels it lacks
(``scripts/gpu-check.sh``: open_clip_torch, ftfy, wcwidth). It imports ``trainables``,
``search.tune.trial`` and the benchmark code only, never Ray, MLflow or Optuna (checked at the end
of the run and by the test suite), and measures:

1. the loop's training throughput (``trainables.loop.train``, FT) against a bare PyTorch loop,
   open_clip ViT-B-16, random init, bf16 autocast, batch 128: images/s and model FLOP
   utilisation (FLOPs of one forward + backward counted by ``torch.utils.flop_counter``, over the
   GPU's dense bf16 peak), with and without ``torch.compile``;
2. one whole ``flyp`` trial of the project's worker function (``search.tune.trial.run_worker``
   with a :class:`~search.tune.trial.LocalSession`, no Ray) on generated 224 px JPEGs: training,
   per-epoch ID val, WiSE selection and the report evaluation, with its time split;
3. decode + preprocessing throughput of the training data path (the same JPEGs, the model's train
   transform, DataLoader workers = CPUs, pinned memory on CUDA) against the training step's
   demand (images/s of 1).

``--quick`` runs the same code on CPU with the micro CLIP and tiny sizes (the test suite does);
its figures only show that the code runs. ``--write FILE`` replaces this check's subsection
(GPU, or the CPU sanity run) in the ``## GPU check`` section of FILE.
"""
from __future__ import annotations

import csv
import os
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

SECTION = "## GPU check (`python -m search.bench --only gpu`)"
GPU_TITLE = "### GPU figures"
QUICK_TITLE = "### CPU `--quick` sanity run (not a GPU figure)"
FORBIDDEN = ("ray", "mlflow", "optuna")

#: Dense bf16 tensor-core peak (TFLOP/s, no sparsity) from NVIDIA's data sheets, by device-name
#: substring, most specific first. ``BENCH_PEAK_TFLOPS`` overrides it.
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4),
                    ("GH200", 989.4), ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0),
                    ("A10", 125.0), ("RTX 4090", 165.2))


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the model and batch of 1, and the generated data of 2 and 3."""

    model: str
    image_px: int          # side of the generated JPEGs
    batch: int
    rounds: int            # alternating (ours, bare) rounds per throughput case
    warmup: int            # untimed steps per loop and round (compilation happens here)
    timed: int
    classes: int
    train_per_class: int
    eval_per_class: int    # ID val, ID test, the OOD set and (2 classes) the zero-shot set
    epochs: int            # of the whole trial
    data_epochs: int       # timed passes over the training images in 3 (after one warm pass)


FULL = Sizes("ViT-B-16", 224, 128, 2, 3, 10, 10, 256, 50, 2, 3)
QUICK = Sizes("micro-clip-16", 32, 16, 1, 2, 3, 4, 8, 4, 1, 1)


# --- generated data ------------------------------------------------------------------------------
def write_jpeg_spec(root: Path, sizes: Sizes, seed: int = 0) -> Path:
    """A dataset spec over generated JPEGs of ``sizes.image_px`` px: ``classes`` ID classes
    (a colour each, with noise and a random bright box), ID train/val/test, an OOD set (stronger
    noise) and a 2-class zero-shot set. Returns the spec path."""
    import yaml
    from PIL import Image

    rng = np.random.default_rng(seed)
    n = sizes.classes + 2
    colours = rng.integers(30, 226, (n, 3))
    names = [f"class{i}" for i in range(n)]
    px = sizes.image_px

    def split(name: str, classes: range, per_class: int, noise: int) -> str:
        rows = []
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for c in classes:
            for i in range(per_class):
                img = np.empty((px, px, 3), np.int16)
                img[:] = colours[c]
                img += rng.integers(-noise, noise + 1, img.shape, dtype=np.int16)
                y, x = rng.integers(0, px // 2, 2)
                img[y:y + px // 3, x:x + px // 3] += 60
                path = folder / f"{c}_{i}.jpg"
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
                rows.append({"path": f"{name}/{path.name}", "label": names[c]})
        with (root / f"{name}.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["path", "label"])
            writer.writeheader()
            writer.writerows(rows)
        return f"{name}.csv"

    ids = range(sizes.classes)
    spec = {
        "name": f"generated-{px}px",
        "id": {"classes": names[:sizes.classes], "templates": ["a photo of a {}.", "a {}."],
               "train": {"csv": split("train", ids, sizes.train_per_class, 30)},
               "val": {"csv": split("val", ids, sizes.eval_per_class, 30)},
               "test": {"csv": split("test", ids, sizes.eval_per_class, 30)}},
        "ood": {"noisy": {"csv": split("ood", ids, sizes.eval_per_class, 90)}},
        "zeroshot": {"other": {"classes": names[sizes.classes:], "templates": ["a photo of a {}."],
                               "test": {"csv": split("zs", range(sizes.classes, n),
                                                     sizes.eval_per_class, 30)}}},
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --- 1. throughput -------------------------------------------------------------------------------
def peak_tflops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in TFLOP/s (``BENCH_PEAK_TFLOPS`` overrides), or None."""
    if os.environ.get("BENCH_PEAK_TFLOPS"):
        return float(os.environ["BENCH_PEAK_TFLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def step_flops(model_name: str, batch: int, px: int, device: torch.device) -> float:
    """FLOPs of one training step's forward + backward (FT: image tower + head, as the
    throughput loops train), counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from search.bench.train import CLASSNAMES
    from trainables.heads import build_classifier
    from trainables.models import create_clip

    bundle = create_clip(model_name, pretrained=None, device=device)
    model = build_classifier(bundle.clip, bundle.tokenizer, CLASSNAMES, ["a photo of a {}."],
                             device).train()
    x = torch.randn(batch, 3, px, px, device=device)
    y = torch.randint(0, len(CLASSNAMES), (batch,), device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=torch.bfloat16,
                                 enabled=device.type == "cuda"):
        F.cross_entropy(model(x), y).backward()
    return float(counter.get_total_flops())


def throughput(sizes: Sizes, device: torch.device) -> tuple[list[list[str]], float]:
    """Rows of figure 1 (eager and compiled) and the loop's eager images/s (the demand of 3)."""
    from search.bench.train import ThroughputCase, compare_loops

    # The model's own input size: micro-clip-16 takes 16 px, ViT-B-16 224 px.
    px = 224 if sizes.model == "ViT-B-16" else 16
    precision = "bf16" if device.type == "cuda" else "fp32"
    flops = step_flops(sizes.model, sizes.batch, px, device)
    peak = peak_tflops(device)
    rows, demand = [], 0.0
    for compiled in (False, True):
        case = ThroughputCase(sizes.model, px, sizes.batch, device.type, precision, sizes.rounds,
                              sizes.warmup, sizes.timed, compile=compiled)
        ours, bare = compare_loops(case)
        for name, times in (("ours (trainables.loop)", ours), ("bare PyTorch", bare)):
            s = min(times)                  # the least disturbed round
            mfu = f"{100 * flops / s / (peak * 1e12):.1f} %" if peak else "n/a (no peak known)"
            rows.append([name, "yes" if compiled else "no", f"{s * 1e3:.1f}",
                         f"{sizes.batch / s:.0f}", mfu])
        if not compiled:
            demand = sizes.batch / min(ours)
    rows.append(["(FLOPs per step, fwd + bwd)", "", f"{flops / 1e9:.4g} GFLOP", "",
                 f"peak {peak:g} TFLOP/s" if peak else "peak unknown"])
    return rows, demand


# --- 2. a whole trial ----------------------------------------------------------------------------
def whole_trial(spec: Path, sizes: Sizes, device: torch.device, work: Path) -> list[list[str]]:
    """One flyp trial through ``search.tune.trial.run_worker`` without Ray; its time split."""
    from search.runspec import RunSpec
    from search.tune.trial import LocalSession, StudySetup, run_worker, setup_dict

    run = RunSpec(method="flyp", model=sizes.model, pretrained=None, data=str(spec),
                  base_params={"epochs": sizes.epochs, "batch_size": sizes.batch,
                               "lr": 1e-5, "weight_decay": 0.1, "warmup_steps": 2, "seed": 0})
    setup = StudySetup(run, storage_path=str(work / "trial"),
                       gpus_per_worker=1.0 if device.type == "cuda" else 0.0,
                       cpus_per_worker=float(os.cpu_count() or 1))
    session = LocalSession(device)
    start = time.perf_counter()
    run_worker({"params": {}, "setup": setup_dict(setup), "run_name": "gpu-check"}, session)
    wall = time.perf_counter() - start
    epochs, final = session.reports[:-1], session.reports[-1]
    parts = {"set-up (model, zero-shot head, data index)": session.reports[0]["time/setup_s"],
             "training": sum(r["time/epoch_train_s"] for r in epochs),
             "per-epoch ID val": sum(r["time/epoch_eval_s"] for r in epochs),
             "WiSE selection (ID val)": final["time/wise_select_s"],
             "report evaluation (OOD curve, α = 1, selected α)": final["time/report_eval_s"]}
    parts["other (checkpoints, reports)"] = wall - sum(parts.values())
    steps = sizes.classes * sizes.train_per_class // sizes.batch
    rows = [[k, f"{v:.1f}", f"{100 * v / wall:.0f} %"] for k, v in parts.items()]
    rows.append(["**whole trial**", f"**{wall:.1f}**", "100 %"])
    rows.append([f"(ID val after the last epoch {epochs[-1]['id_val/acc']:.3f}, selected α "
                 f"{final['wise_alpha']:g}, {len(epochs)} epochs × {steps} steps)", "", ""])
    return rows


# --- 3. the data path ----------------------------------------------------------------------------
def data_path(spec: Path, sizes: Sizes, device: torch.device) -> tuple[float, int]:
    """Images/s the training data path delivers (decode + train transform + collate, pinned on
    CUDA), timed over ``data_epochs`` passes after one warm pass; and the worker count."""
    from trainables.data import build_task_data
    from trainables.loop import default_loader
    from trainables.models import create_clip
    from trainables.sampling import GlobalBatchSampler
    from trainables.spec import load_spec

    bundle = create_clip(sizes.model, pretrained=None, device="cpu")
    data = build_task_data(load_spec(spec), bundle.preprocess_train, bundle.preprocess_val, seed=0)
    workers = os.cpu_count() or 1
    sampler = GlobalBatchSampler(len(data.train), sizes.batch, seed=0)
    loader = default_loader(data.train, sampler, None, workers,
                            pin_memory=device.type == "cuda")
    for _ in loader:                           # warm: workers started, files in the page cache
        pass
    start, images = time.perf_counter(), 0
    for _ in range(sizes.data_epochs):
        for x, _y in loader:
            images += x.shape[0]
    return images / (time.perf_counter() - start), workers


# --- the check -----------------------------------------------------------------------------------
def run(quick: bool, work: Path, write: Path | None, command: str) -> int:
    """Run 1-3, print the Markdown block, write it into ``write``. Each part runs even if an
    earlier one failed (one GPU session must bring back whatever it can), and a failure is
    written in place of its figure. Exit status 0; 1 if a part failed or a forbidden package
    was imported; 2 without a GPU (unless ``quick``)."""
    from search.bench.core import machine

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sizes = QUICK if quick else FULL
    device = torch.device("cuda", 0) if torch.cuda.is_available() and not quick else \
        torch.device("cpu")
    if not quick and device.type != "cuda":
        print("error: no CUDA device: the GPU check needs a GPU (use --quick for the CPU sanity "
              "run)", file=sys.stderr)
        return 2
    timings: dict[str, float] = {}
    failures: dict[str, str] = {}

    def part(name: str, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        except Exception as err:        # noqa: BLE001 - reported in the figure, run goes on
            traceback.print_exc()
            failures[name] = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
            return None
        finally:
            timings[name] = time.perf_counter() - start

    spec = part("data generation", write_jpeg_spec, work / "data", sizes)
    fig1 = part("1", throughput, sizes, device)
    fig3 = part("3", data_path, spec, sizes, device) if spec else None
    fig2 = part("2", whole_trial, spec, sizes, device, work) if spec else None
    imported = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
    block = _markdown(sizes, device, command, machine(), fig1, fig2, fig3, timings, failures,
                      imported, quick)
    print(block, flush=True)
    if write is not None:
        write_subsection(write, QUICK_TITLE if quick else GPU_TITLE, block)
        print(f"wrote the {'CPU sanity run' if quick else 'GPU figures'} to {write}")
    return 1 if imported or failures else 0


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] +
            ["| " + " | ".join(r) + " |" for r in rows] + [""])


def _markdown(sizes: Sizes, device: torch.device, command: str, machine: str,
              fig1: tuple[list[list[str]], float] | None, fig2: list[list[str]] | None,
              fig3: tuple[float, int] | None, timings: dict[str, float],
              failures: dict[str, str], imported: list[str], quick: bool) -> str:
    title = QUICK_TITLE if quick else GPU_TITLE
    out = [title, "", f"Command: `{command}`  ", f"Machine: {machine}  ",
           f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", ""]
    if quick:
        out += ["CPU, micro CLIP, tiny sizes: shows that the check runs; these are not GPU "
                "figures and say nothing about GPU speed.", ""]
    if "data generation" in failures:
        out += [f"Generating the JPEGs **failed** ({failures['data generation']}): parts 2 and "
                "3 did not run.", ""]
    out += [f"**1. Training throughput**, {sizes.model}, random init, "
            f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}, batch {sizes.batch}, FT "
            f"(image tower + head), best of {sizes.rounds} alternating round(s) of "
            f"{sizes.warmup} warm-up + {sizes.timed} timed steps:", ""]
    if fig1:
        out += _table(["loop", "torch.compile", "ms/step", "images/s", "MFU"], fig1[0])
    elif "1" in failures:
        out += [f"**failed**: {failures['1']}", ""]
    out += [f"**2. One whole `flyp` trial** (`search.tune.trial.run_worker`, no Ray), "
            f"{sizes.model}, batch {sizes.batch}, {sizes.classes} classes × "
            f"{sizes.train_per_class} generated {sizes.image_px} px JPEGs, "
            f"{sizes.eval_per_class} per class in ID val/test, OOD and zero-shot, 11-point α "
            "grid:", ""]
    if fig2:
        out += _table(["part", "s", "share"], fig2)
    elif "2" in failures:
        out += [f"**failed**: {failures['2']}", ""]
    if fig3:
        supply, workers = fig3
        demand = fig1[1] if fig1 else None
        verdict = (f"against the training step's {demand:.0f} images/s (1, ours, eager): "
                   f"supply / demand = **{supply / demand:.2f}** "
                   f"({'keeps up' if supply >= demand else 'the step would wait for data'})"
                   if demand else "(no demand figure: part 1 failed)")
        out += [f"**3. Data path**: {supply:.0f} images/s decoded and transformed ({workers} "
                f"DataLoader workers = CPUs, {sizes.image_px} px JPEGs, the model's train "
                f"transform) {verdict}.", ""]
    elif "3" in failures:
        out += [f"**3. Data path** **failed**: {failures['3']}", ""]
    out.append("Imports: " + ("no Ray, MLflow or Optuna module was imported." if not imported
                              else f"**forbidden modules imported: {', '.join(imported[:5])}**"))
    out.append("Check time: " + ", ".join(
        f"{k if not k.isdigit() else 'part ' + k} {v:.0f} s" for k, v in timings.items()) + ".")
    return "\n".join(out).rstrip() + "\n"


_INTRO = """\
The check for a GPU machine. It needs torch, torchvision, timm, transformers and
safetensors there, plus three wheels carried with the tree (open_clip_torch, ftfy, wcwidth:
`scripts/gpu-check.sh fetch` downloads them into `.whl/` here, under 64 MiB with the code), and
never imports Ray, MLflow or Optuna. On the GPU machine, from the carried tree:
`scripts/gpu-check.sh run` (unpacks the wheels into `.whl/site` and runs
`PYTHONPATH=$PWD:$PWD/.whl/site HF_HUB_OFFLINE=1 python -m search.bench --only gpu --write
BENCHMARKS.md`). About 5-8 minutes on one GPU (estimate; two `torch.compile` warm-ups)."""


def write_subsection(path: Path, title: str, block: str) -> None:
    """Replace (or add) the ``title`` subsection of the GPU-check section; keep the other one
    and everything outside the section."""
    lines = path.read_text().splitlines() if path.exists() else []
    start = next((i for i, ln in enumerate(lines) if ln.strip() == SECTION), None)
    if start is None:
        before, body, after = lines + ([""] if lines and lines[-1].strip() else []), [], []
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        before, body, after = lines[:start], lines[start + 1:end], lines[end:]
    subs: dict[str, list[str]] = {}
    current = None
    for ln in body:
        if ln.startswith("### "):
            current = ln.strip()
            subs[current] = []
        if current is not None:
            subs[current].append(ln)
    subs[title] = block.rstrip("\n").splitlines()
    if GPU_TITLE not in subs:
        subs[GPU_TITLE] = [GPU_TITLE, "", "Not measured: no GPU yet. Run the command above."]
    section = [SECTION, "", *_INTRO.splitlines(), ""]
    for key in (GPU_TITLE, QUICK_TITLE):
        if key in subs:
            lines_of = subs[key]
            while lines_of and not lines_of[-1].strip():
                lines_of = lines_of[:-1]
            section += lines_of + [""]
    path.write_text("\n".join(before + section + after).rstrip("\n") + "\n")
