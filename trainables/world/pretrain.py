"""Pretrain the tiny CLIP (``tiny-clip-32``) from random init on the embedded world, on the CPU.

Contrastive image-caption training with open_clip's ``ClipLoss`` on all 20 classes x 4 styles:
each step draws ``batch`` images from a pool re-drawn in memory from the ``pretrain`` split (its
first images are the on-disk ``pretrain/corpus.csv``, byte for byte) and writes a fresh random
caption for each, so the model sees many phrasings of the same image. AdamW (CLIP's betas, no
weight decay on gains/biases/logit_scale), linear warmup then cosine (``open_clip_train``'s
scheduler), logit_scale clamped to ln(100) as open_clip's trainer does.

    python -m trainables.world.pretrain --out trainables/assets/tiny-clip-32.safetensors --seed 0

Writes fp16 safetensors of ``model.state_dict()``, and beside it ``<stem>.json`` (sha256,
command) and ``<stem>.md`` (command, seed, wall time, machine, zero-shot accuracies vs chance).
A checkpoint every ``--ckpt-every`` steps (under ``--ckpt-dir``) lets a killed run resume.
"""
from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.loss import ClipLoss
from open_clip_train.scheduler import cosine_lr
from safetensors.torch import save_file
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..files import atomic_write, sha256_file
from ..models import clamp_logit_scale, create_clip
from .captions import CLASS_TEMPLATES, STYLE_TEMPLATES, caption
from .generate import render_range
from .render import BACKGROUNDS, COLOURS, HELDOUT_CLASSES, ID_CLASSES, SHAPES, SIZES, STYLES

MODEL = "tiny-clip-32"
#: zero-shot evaluation: name -> (split, class names, templates, label field)
EVAL_SETS = {
    "id-photo": ("id-test", ID_CLASSES, CLASS_TEMPLATES, "label"),
    "sketch": ("ood-sketch", ID_CLASSES, CLASS_TEMPLATES, "label"),
    "cartoon": ("ood-cartoon", ID_CLASSES, CLASS_TEMPLATES, "label"),
    "painting": ("ood-painting", ID_CLASSES, CLASS_TEMPLATES, "label"),
    "heldout-classes": ("zeroshot", HELDOUT_CLASSES, CLASS_TEMPLATES, "label"),
    "style": ("context", STYLES, STYLE_TEMPLATES, "style"),
}
_FIELDS = [("label", SHAPES), ("style", STYLES), ("colour", list(COLOURS)), ("size", SIZES),
           ("background", BACKGROUNDS)]


def _chunk(job: tuple[str, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    split, seed, start, stop = job
    images, metas = render_range(split, seed, start, stop)
    codes = np.array([[names.index(m[f]) for f, names in _FIELDS] for m in metas], np.int8)
    return images, codes


def render_pool(split: str, seed: int, n: int, workers: int = 2) -> tuple[torch.Tensor, np.ndarray]:
    """Images 0..n-1 of a split as a (n, 3, 32, 32) uint8 tensor, and (n, 5) attribute codes."""
    jobs = [(split, seed, a, min(a + 2000, n)) for a in range(0, n, 2000)]
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("fork").Pool(min(workers, 2)) as pool:
            parts = pool.map(_chunk, jobs, chunksize=1)
    else:
        parts = [_chunk(j) for j in jobs]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts])).permute(0, 3, 1, 2)
    return images.contiguous(), np.concatenate([p[1] for p in parts])


def _meta(codes: np.ndarray) -> dict[str, str]:
    return {f: names[int(c)] for (f, names), c in zip(_FIELDS, codes)}


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, 32, 32) -> float, normalised as open_clip's image transforms do."""
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


@torch.no_grad()
def zero_shot_eval(model, tokenizer, eval_data: dict, batch: int = 500) -> dict[str, float]:
    """Zero-shot accuracy (%) on each evaluation set, with open_clip's classifier builder."""
    model.eval()
    out = {}
    for name, (images, labels) in eval_data.items():
        _, classes, templates, _ = EVAL_SETS[name]
        weights = open_clip.build_zero_shot_classifier(model, tokenizer, classes, templates)
        feats = torch.cat([model.encode_image(normalise(images[i:i + batch]), normalize=True)
                           for i in range(0, len(images), batch)])
        out[name] = 100.0 * (feats @ weights).argmax(1).eq(labels).float().mean().item()
    return out


def eval_data(seed: int, n: int, workers: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` images of each test split (the same images as on disk)."""
    data = {}
    for name, (split, classes, _, field) in EVAL_SETS.items():
        images, codes = render_pool(split, seed, n, workers)
        col = [f for f, _ in _FIELDS].index(field)
        names = [dict(_FIELDS)[field][int(c)] for c in codes[:, col]]
        data[name] = (images, torch.tensor([list(classes).index(x) for x in names]))
    return data


def chance(name: str) -> float:
    return 100.0 / len(EVAL_SETS[name][1])


def _optimizer(model: torch.nn.Module, lr: float, wd: float) -> torch.optim.Optimizer:
    """AdamW as open_clip trains CLIP: no weight decay on gains, biases and logit_scale."""
    no_wd = [p for n, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n]
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or "logit_scale" in n)]
    return torch.optim.AdamW([{"params": no_wd, "weight_decay": 0.0},
                              {"params": decay, "weight_decay": wd}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)


def _saved_state(ckpt: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint to resume from: ``ckpt`` if it exists and was written with ``config``."""
    if not ckpt.is_file():
        return None
    state = torch.load(ckpt, weights_only=True)
    if state.get("config") != config:
        print(f"ignoring {ckpt}: written with other settings {state.get('config')}", flush=True)
        return None
    return state


def _save_fp16(model: torch.nn.Module, out: Path) -> str:
    """Write the weights to ``out`` as fp16 safetensors; returns the file's sha256."""
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(out))
    return sha256_file(out)


def _batch_loss(model: torch.nn.Module, tokenizer: Any, loss_fn: ClipLoss, pool: torch.Tensor,
                codes: np.ndarray, rng: np.random.Generator, batch: int, bf16: bool
                ) -> torch.Tensor:
    """CLIP's contrastive loss on ``batch`` images of the rendered ``pool`` drawn with ``rng``,
    each with a caption of its own metadata (also drawn with ``rng``)."""
    idx = rng.integers(len(pool), size=batch)
    texts = tokenizer([caption(_meta(codes[i]), rng) for i in idx])
    # bf16 autocast uses the CPU's AMX units for matmuls (~1.7x faster per step here); the
    # flash-attention backward is much slower in bf16 on CPU, so attention takes the math path.
    backends = [SDPBackend.MATH] if bf16 else [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), sdpa_kernel(backends):
        img_f = model.encode_image(normalise(pool[idx]), normalize=True)    # (B, D)
        txt_f = model.encode_text(texts, normalize=True)                    # (B, D)
    return loss_fn(img_f.float(), txt_f.float(), model.logit_scale.exp())


def train(args: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pool, codes = render_pool("pretrain", args.seed, args.pool, args.workers)
    evals = eval_data(args.seed, args.eval_size, args.workers)
    print(f"rendered pool of {len(pool)} + eval sets in {time.perf_counter() - start:.0f} s",
          flush=True)
    torch.manual_seed(args.seed)
    bundle = create_clip(MODEL, pretrained=None)
    model, tokenizer = bundle.clip, bundle.tokenizer
    opt = _optimizer(model, args.lr, args.wd)
    schedule = cosine_lr(opt, args.lr, args.warmup, args.steps)
    loss_fn = ClipLoss()
    ckpt, step0 = Path(args.ckpt_dir) / "last.pt", 0
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    config = {k: getattr(args, k) for k in ("seed", "steps", "batch", "lr", "wd", "warmup", "pool")}
    state = None if args.no_resume else _saved_state(ckpt, config)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step0 = int(state["step"])
        print(f"resumed from {ckpt} at step {step0}", flush=True)
    t0, losses = time.perf_counter(), []
    for step in range(step0, args.steps):
        model.train()
        lr = schedule(step)
        rng = np.random.default_rng([args.seed, step])  # batch and captions: a function of step
        loss = _batch_loss(model, tokenizer, loss_fn, pool, codes, rng, args.batch, args.bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clamp_logit_scale(model)
        losses.append(loss.item())
        done = step + 1
        if done % args.log_every == 0 or done == args.steps:
            el = time.perf_counter() - t0
            rate = (done - step0) * args.batch / el
            print(f"step {done}/{args.steps} loss {np.mean(losses[-args.log_every:]):.3f} "
                  f"lr {lr:.2e} scale {model.logit_scale.exp().item():.1f} "
                  f"elapsed {el / 60:.1f} min ({rate:.0f} img/s)", flush=True)
        if done % args.ckpt_every == 0 and done < args.steps:
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": done,
                     "config": config}
            atomic_write(ckpt, functools.partial(torch.save, state))
            acc = zero_shot_eval(model, tokenizer, evals)
            print(f"step {done} checkpoint; zero-shot " +
                  " ".join(f"{k} {v:.1f}" for k, v in acc.items()), flush=True)
    wall = time.perf_counter() - start
    out = Path(args.out)
    digest = _save_fp16(model, out)
    ckpt.unlink(missing_ok=True)  # finished: a rerun of the command must start from scratch
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) sha256 {digest}", flush=True)
    loaded = create_clip(MODEL, pretrained=str(out))  # through open_clip's own loader
    acc = zero_shot_eval(loaded.clip, loaded.tokenizer, evals)
    print("zero-shot accuracy of the saved weights (%), chance in brackets:")
    for k, v in acc.items():
        print(f"  {k:16s} {v:5.1f}  ({chance(k):.0f})")
    _write_report(args, out, digest, acc, wall)
    return acc


def _write_report(args: argparse.Namespace, out: Path, digest: str, acc: dict[str, float],
                  wall: float) -> None:
    env = "".join(f"{k}={os.environ[k]} " for k in ("OMP_WAIT_POLICY",) if k in os.environ)
    command = env + "python -m trainables.world.pretrain " + " ".join(map(shlex.quote, args.argv))
    meta = {"sha256": digest, "command": command, "model": MODEL}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {len(EVAL_SETS[k][1])} | {v:.1f} | {chance(k):.1f} |"
                     for k, v in acc.items())
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, " \
              f"{args.threads} threads, Python {platform.python_version()}"
    out.with_suffix(".md").write_text(f"""# {out.name}

Tiny CLIP (`{MODEL}`, open_clip JSON in `trainables/model_configs/`) pretrained from random
initialisation on the embedded world (all 20 classes x 4 styles, captions re-sampled every step)
by `trainables/world/pretrain.py`.

- Command: `{command}`
- Seed: {args.seed}; steps: {args.steps}; batch: {args.batch}; lr {args.lr}, wd {args.wd}, \
warmup {args.warmup}, cosine; pool {args.pool} images; precision {args.precision} (autocast)
- Wall time: {wall / 60:.1f} min (including {args.pool} images rendered in memory)
- Machine: {machine}
- SHA-256: `{digest}`
- Format: fp16 safetensors of `model.state_dict()`; load with
  `trainables.models.create_clip("{MODEL}", pretrained=path)`.

## Zero-shot accuracy of the saved weights ({args.eval_size} test images per set)

| set | classes | accuracy (%) | chance (%) |
|---|---|---|---|
{rows}

ID = classes 0-9, photo style; sketch/cartoon/painting = the same classes in the shifted styles;
heldout-classes = classes 10-19, all styles; style = 4-way style recognition over all classes.
Templates: `trainables/world/captions.py` (`CLASS_TEMPLATES`, `STYLE_TEMPLATES`).
""")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description="Pretrain tiny-clip-32 on the embedded world (CPU).")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors (fp16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1900)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--pool", type=int, default=200_000, help="images re-drawn in memory")
    p.add_argument("--eval-size", type=int, default=1000, help="test images per evaluation set")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="processes for rendering (at most 2)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                   help="bf16 autocast (weights and optimizer stay fp32) or plain fp32")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--ckpt-every", type=int, default=300)
    p.add_argument("--ckpt-dir", type=Path, default=Path("runs/pretrain-tiny-clip-32"))
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    args = p.parse_args(argv)
    args.argv = argv
    args.bf16 = args.precision == "bf16"
    train(args)


if __name__ == "__main__":
    main()
