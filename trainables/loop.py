"""The one training loop for every method.

AdamW, linear warm-up then cosine decay (torch's schedulers), global grad-norm clipping, bf16
autocast on CUDA, optional cached image features for stages whose image tower is frozen (LP), and
anchor batches drawn beside each task batch (ARF). The frozen reference model lives in the
method's context (eval mode, no grad) and never in the optimizer. On CUDA: fused AdamW, TF32
matmuls, DataLoader workers (``trainables.device``); ``TrainConfig.compile`` compiles the step
(``torch.compile``). CPU runs are unchanged by any of these.

Distribution: ``wrap_module`` (e.g. ``ray.train.torch.prepare_model``) wraps the per-step module,
which is what DDP must see. ``cfg.batch_size`` is the GLOBAL batch: the loop reads this process's
rank and world size from :func:`trainables.distributed.world` and shards the data itself with a
:class:`~trainables.sampling.GlobalBatchSampler` (each worker takes ``batch_size / N`` samples of
every global batch, a function of (seed, epoch)), so N workers train on exactly the batches one
worker would, and a resumed run on the batches an uninterrupted one would. ``make_loader`` builds
the DataLoader around that sampler. The defaults run in one process.
"""
from __future__ import annotations

import functools
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .config import TrainConfig
from .data import LabeledImages, TaskData, pair_collate
from .device import configure_cuda, loader_workers, prefetch_factor
from .distributed import mean_over_workers, world
from .methods.base import Batch, Method, MethodContext, Stage
from .sampling import ANCHOR_STREAM, GlobalBatchSampler

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the trial fails with this error."""


@dataclass
class EpochReport:
    """What one finished epoch reports; ``epoch`` counts across stages from 1."""

    stage: str
    epoch: int
    train_loss: float
    terms: dict[str, float]
    steps: int
    seconds: float


@dataclass
class LoopState:
    """Where to resume: the next (stage, epoch) and the optimizer/scheduler/method states."""

    stage_index: int = 0
    epoch_in_stage: int = 0
    global_epoch: int = 0
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    method: dict[str, Any] = field(default_factory=dict)


class _StepModule(nn.Module):
    """Holds the trainable model so DDP hooks every parameter the method's loss touches."""

    def __init__(self, model: nn.Module, method: Method, ctx: MethodContext):
        super().__init__()
        self.model = model
        self.method = method
        self.ctx = ctx  # plain attribute: the reference model is not a submodule

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.method.loss(self.model, batch, self.ctx)


class WithIndex(Dataset):
    """``dataset``'s items with the sample's index appended: (..., i). The loop needs each
    sample's index for per-sample draws that do not depend on the batch split."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple:
        return (*self.dataset[i], i)


def default_loader(dataset: Dataset, batch_sampler: GlobalBatchSampler,
                   collate_fn: Callable | None = None, num_workers: int = 0,
                   pin_memory: bool = False) -> DataLoader:
    """A loader over this worker's share of each global batch (``batch_sampler`` decides which
    samples, seeded per epoch, so runs are reproducible). With ``num_workers`` > 0 each worker
    keeps :func:`~trainables.device.prefetch_factor` batches ready, and the workers persist
    across epochs."""
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn,
                      num_workers=num_workers, persistent_workers=num_workers > 0,
                      prefetch_factor=prefetch_factor(num_workers), pin_memory=pin_memory)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int
                       ) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` steps."""
    warmup = max(0, min(warmup, total - 1))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    if warmup == 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warmup + 1),
                                               end_factor=1.0, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


def _autocast(device: torch.device, precision: str):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


@torch.no_grad()
def cache_image_features(model: nn.Module, dataset: LabeledImages, transform: Callable,
                         device: torch.device, batch_size: int = 256) -> TensorDataset:
    """Features (N, D) and labels (N,) of ``dataset`` under eval ``transform`` (frozen tower)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(LabeledImages(dataset.samples, transform), batch_size=batch_size)
    feats, labels = [], []
    for images, y in loader:
        feats.append(model.image_features(images.to(device)).float().cpu())
        labels.append(y)
    model.train(was_training)
    return TensorDataset(torch.cat(feats), torch.cat(labels))


@dataclass
class _StageRun:
    """One stage's training objects: what it trains, its data loaders, optimizer and schedule."""

    index: int
    stage: Stage
    epochs: int
    params: list[nn.Parameter]
    sampler: GlobalBatchSampler
    loader: DataLoader
    anchor_loaders: dict[str, DataLoader]
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step_module: nn.Module

    def snapshot(self, method: Method, next_stage: int, next_epoch: int,
                 global_epoch: int) -> LoopState:
        """The :class:`LoopState` after an epoch of this stage; the optimizer and scheduler
        states only when the next epoch is still in this stage (a new stage starts afresh)."""
        same = next_stage == self.index
        return LoopState(next_stage, next_epoch, global_epoch,
                         self.optimizer.state_dict() if same else None,
                         self.scheduler.state_dict() if same else None, method.extra_state())


def _start_stage(index: int, stage: Stage, model: nn.Module, method: Method, ctx: MethodContext,
                 data: TaskData, cfg: TrainConfig, device: torch.device, workers: int,
                 eval_transform: Callable | None, make_loader: Callable[..., DataLoader],
                 wrap_module: Callable[[nn.Module], nn.Module]) -> _StageRun | None:
    """Freeze what ``stage`` does not train and build its loaders, optimizer and schedule; None
    when the stage trains nothing."""
    for name, p in model.named_parameters():
        p.requires_grad_(stage.trains(name))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return None
    epochs = stage.epochs or cfg.epochs
    rank, world_size = world()
    if stage.cache_features:
        dataset: Dataset = cache_image_features(model, data.train,
                                                eval_transform or data.val.transform, device)
    else:
        dataset = data.train
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, cfg.seed, rank=rank,
                                 world_size=world_size)
    loader = make_loader(WithIndex(dataset), sampler, None,
                         0 if stage.cache_features else workers)   # features: in memory
    steps_per_epoch = len(loader)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    # ARF's anchor pairs: one global anchor batch per step, sharded like the task batch
    anchor_loaders = {
        name: make_loader(data.anchors[name], GlobalBatchSampler(
            len(data.anchors[name]), cfg.batch_size, cfg.seed,
            stream=ANCHOR_STREAM + i, num_batches=steps_per_epoch, rank=rank,
            world_size=world_size), pair_collate(ctx.tokenizer), workers)
        for i, name in enumerate(method.anchor_sets)}
    optimizer = torch.optim.AdamW(params, lr=stage.lr or cfg.lr,
                                  weight_decay=cfg.weight_decay if stage.weight_decay is None
                                  else stage.weight_decay,
                                  fused=True if device.type == "cuda" else None)
    scheduler = method.lr_scheduler(optimizer, stage, steps_per_epoch, cosine_with_warmup(
        optimizer, cfg.warmup_steps, steps_per_epoch * epochs))
    step_module = wrap_module(_StepModule(model, method, ctx))
    if cfg.compile:     # after DDP's wrapper, as torch's DDP + compile notes ask
        step_module = torch.compile(step_module)
    return _StageRun(index, stage, epochs, params, sampler, loader, anchor_loaders,
                     steps_per_epoch, optimizer, scheduler, step_module)


def _batch(x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, anchor_iters: dict,
           cached_features: bool, global_epoch: int, device: torch.device) -> Batch:
    """One step's :class:`Batch` on ``device``: images (or cached features), labels, anchors."""
    batch = Batch(labels=y.to(device, non_blocking=True), indices=indices, epoch=global_epoch)
    if cached_features:
        batch.features = x.to(device, non_blocking=True)
    else:
        batch.images = x.to(device, non_blocking=True)
    for name, it in anchor_iters.items():
        images, tokens = next(it)
        batch.anchors[name] = (images.to(device, non_blocking=True),
                               tokens.to(device, non_blocking=True))
    return batch


def _train_epoch(run: _StageRun, model: nn.Module, method: Method, cfg: TrainConfig,
                 device: torch.device, epoch: int, global_epoch: int) -> EpochReport:
    """Epoch ``epoch`` of ``run``'s stage (``global_epoch`` counts from 0 across stages)."""
    # Every epoch's randomness (shuffling, anchors, templates, augmentation) is a function of
    # (seed, epoch), so a run resumed from a checkpoint continues exactly as if never interrupted.
    for s in (run.sampler, *(a.batch_sampler for a in run.anchor_loaders.values())):
        s.set_epoch(global_epoch)
    anchor_iters = {name: iter(a) for name, a in run.anchor_loaders.items()}
    torch.manual_seed(cfg.seed * 1000 + global_epoch)
    start, total, terms_sum, steps = time.perf_counter(), 0.0, {}, 0
    for x, y, indices in itertools.islice(run.loader, run.steps_per_epoch):
        batch = _batch(x, y, indices, anchor_iters, run.stage.cache_features, global_epoch,
                       device)
        with _autocast(device, cfg.precision):
            terms = run.step_module(batch)
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss {loss.item()} at stage {run.stage.name} epoch {epoch + 1} "
                f"step {steps + 1} (terms {({k: v.item() for k, v in terms.items()})}); "
                "lower the learning rate")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        method.after_step(model)
        total += loss.item()
        for k, v in terms.items():
            terms_sum[k] = terms_sum.get(k, 0.0) + v.item()
        steps += 1
    method.on_epoch_end(model, epoch, run.stage)
    # the global batch's loss: per-sample terms are per-worker means (their mean over the
    # workers is the global mean); contrastive terms are already global on every worker
    means = mean_over_workers({"loss": total / max(steps, 1),
                               **{k: v / max(steps, 1) for k, v in terms_sum.items()}})
    report = EpochReport(run.stage.name, global_epoch + 1, means.pop("loss"), means, steps,
                         time.perf_counter() - start)
    log.info("stage %s epoch %d: loss %.4f (%d steps, %.1fs)", run.stage.name,
             report.epoch, report.train_loss, steps, report.seconds)
    return report


def train(model: nn.Module, method: Method, ctx: MethodContext, data: TaskData,
          cfg: TrainConfig, *, device: torch.device | str = "cpu",
          eval_transform: Callable | None = None,
          on_epoch_end: Callable[[EpochReport, Callable[[], LoopState]], None] | None = None,
          resume: LoopState | None = None,
          wrap_module: Callable[[nn.Module], nn.Module] = lambda m: m,
          make_loader: Callable[..., DataLoader] = default_loader) -> list[EpochReport]:
    """Train ``model`` in place with ``method``; returns the per-epoch reports.

    ``on_epoch_end(report, snapshot)`` is called after every epoch; ``snapshot()`` returns the
    :class:`LoopState` to checkpoint (the model's weights are the caller's to save). A NaN/inf
    loss raises :class:`NonFiniteLossError`.
    """
    device = torch.device(device)
    configure_cuda(device)
    # -1 (auto): sized from this process's CPUs, which a trial sets as torch's thread count
    workers = loader_workers(cfg.num_workers, torch.get_num_threads(), device)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    method.setup(model, ctx)
    resume = resume or LoopState()
    if resume.method:
        method.load_extra_state(resume.method)
    missing = [a for a in method.anchor_sets if a not in data.anchors]
    if missing:
        raise ValueError(f"method {method.name} needs anchor set(s) {missing}; prepare them first")
    reports: list[EpochReport] = []
    global_epoch = resume.global_epoch
    for stage_index, stage in enumerate(method.stages()):
        if stage_index < resume.stage_index:
            continue
        run = _start_stage(stage_index, stage, model, method, ctx, data, cfg, device, workers,
                           eval_transform, make_loader, wrap_module)
        if run is None:
            continue
        first_epoch = 0
        if stage_index == resume.stage_index and resume.optimizer is not None:
            run.optimizer.load_state_dict(resume.optimizer)
            run.scheduler.load_state_dict(resume.scheduler)
            first_epoch = resume.epoch_in_stage
        for epoch in range(first_epoch, run.epochs):
            report = _train_epoch(run, model, method, cfg, device, epoch, global_epoch)
            global_epoch += 1
            reports.append(report)
            if on_epoch_end is not None:
                last = epoch + 1 == run.epochs
                next_stage, next_epoch = (stage_index + 1, 0) if last else (stage_index, epoch + 1)
                on_epoch_end(report, functools.partial(run.snapshot, method, next_stage,
                                                       next_epoch, global_epoch))
    for p in model.parameters():
        p.requires_grad_(False)
    return reports
