"""One trial: the worker function, and the shared set-up it and the driver use.

Per worker: build the model from the zero-shot classifier θ_zs, run the one training loop
(``trainables.loop.train``, which shards each global batch itself; in a Train worker group with
Ray's ``prepare_model`` for DDP), report ID-val accuracy and a checkpoint after every epoch (what
ASHA prunes on and what a restarted worker resumes from), then on rank 0 search the WiSE mixing
coefficient on ID val only, evaluate the report sets (OOD, zero-shot, context) at α = 1, at the
selected α and along the curve, and report the final result with a checkpoint of θ_ft (what model
soups average). :func:`run_worker` does this through a :class:`WorkerSession`; only
:func:`train_worker` (Ray's entry point) imports Ray.
"""
from __future__ import annotations

import contextlib
import copy
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ContextManager, Iterator, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from trainables import metrics as M
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.config import TrainConfig, split_config
from trainables.data import TaskData, build_task_data
from trainables.device import loader_workers
from trainables.spec import load_spec
from trainables.evaluate import SELECTION, Evaluator
from trainables.heads import build_classifier
from trainables.methods import Method, MethodContext, get_method_class
from trainables.models import ClipBundle, create_clip, logit_scale
from trainables.wise import interpolate

from . import faults
from .plan import TrialPlan, plan_trial
from .selection import select_alpha

#: set (to 1) by ``search.run --verbose``: workers keep the libraries' INFO lines too
VERBOSE_ENV = "ROBUST_SEARCH_VERBOSE"
OBJECTIVE = "objective"      # what Tune, Optuna and ASHA maximise: ID-val accuracy
FINAL = "final"              # 1.0 on the result that carries the WiSE selection


@dataclass(frozen=True)
class StudySetup:
    """What every trial of a study shares (static; the searched values come from Tune)."""

    method: str
    model: str
    pretrained: str | None
    data: str
    storage_path: str
    wise_strategy: str = "grid"
    wise_grid: tuple[float, ...] = tuple(i / 10 for i in range(11))
    wise_evaluations: int = 6
    workers_per_trial: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_failures: int = 0
    keep_checkpoints: int = 1
    eval_batch_size: int = 256
    torch_threads: int = 0
    trial_runner: str = "auto"   # auto | actor | worker-group (search.plan)
    report_eval: bool = True     # False: no end-of-trial reporting evaluation (OOD curve, every
                                 # set at α = 1 and α*): only search.bench's figure 4, which
                                 # reads the ID-val objective alone, turns it off
    base_params: dict[str, Any] = field(default_factory=dict)

    @property
    def plan(self) -> TrialPlan:
        """Where this study's trials train and what each reserves (:func:`search.plan.plan_trial`):
        by default a one-worker CPU trial in the reused Tune trial actor, every trial with a GPU
        or several workers in a Ray Train worker group."""
        return plan_trial(self.trial_runner, self.workers_per_trial, self.cpus_per_worker,
                          self.gpus_per_worker, self.max_failures)

    @property
    def in_trial_process(self) -> bool:
        """Whether :func:`train_worker` runs directly in Tune's trial actor (no Ray Train)."""
        return self.plan.in_actor

    @property
    def trial_resources(self) -> dict[str, float]:
        """What one trial reserves in all: the worker's CPUs/GPUs when it runs in the trial
        actor, else 1 CPU for the actor plus every Train worker's CPUs/GPUs."""
        return dict(self.plan.total)


@dataclass
class RunParts:
    """Everything one run needs, built once: model (at θ_zs), method, context, data, evaluator."""

    bundle: ClipBundle
    method: Method
    train_cfg: TrainConfig
    model: nn.Module
    theta_zs: dict[str, torch.Tensor]
    ctx: MethodContext
    data: TaskData
    evaluator: Evaluator


def prepare(setup: StudySetup, params: dict[str, Any], device: torch.device | str = "cpu"
            ) -> RunParts:
    """Build model, method, data and evaluator for one run; raises ConfigError/DataError early."""
    device = torch.device(device)
    cls = get_method_class(setup.method)
    train_cfg, method_params = split_config({**setup.base_params, **params}, cls.Params)
    method = cls(method_params, train_cfg)
    torch.manual_seed(train_cfg.seed)   # a random-init model (tests, from-scratch) is seeded too
    bundle = create_clip(setup.model, setup.pretrained, device)
    if train_cfg.grad_checkpointing:    # recompute activations in backward: less memory, ~30% slower
        bundle.clip.set_grad_checkpointing(True)
    spec = load_spec(setup.data)
    data = build_task_data(spec, bundle.preprocess_train, bundle.preprocess_val,
                           seed=train_cfg.seed, anchors=cls.anchor_sets)
    model = build_classifier(bundle.clip, bundle.tokenizer, list(spec.classes),
                             list(spec.templates), device)
    theta_zs = {k: v.detach().clone() for k, v in model.state_dict().items()}
    reference = None
    if cls.uses_reference:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    ctx = MethodContext(classnames=list(spec.classes), templates=list(spec.templates),
                        context_templates=list(spec.context_templates), tokenizer=bundle.tokenizer,
                        device=device, zs_logit_scale=float(logit_scale(bundle.clip).detach()),
                        reference=reference)
    evaluator = Evaluator(data, bundle.tokenizer, device, batch_size=setup.eval_batch_size,
                          num_workers=loader_workers(train_cfg.num_workers,
                                                     setup.cpus_per_worker, device))
    return RunParts(bundle, method, train_cfg, model, theta_zs, ctx, data, evaluator)


def wise_evaluation(parts: RunParts, theta_ft: dict[str, torch.Tensor], setup: StudySetup
                    ) -> dict[str, float]:
    """Select α on ID val, then evaluate for reporting; returns the flat final metrics."""
    model, method, evaluator = parts.model, parts.method, parts.evaluator
    keys = method.trained_names(model)

    def load(alpha: float) -> nn.Module:
        model.load_state_dict(interpolate(parts.theta_zs, theta_ft, alpha, keys))
        return model

    def id_val_at(alpha: float) -> float:
        return evaluator.evaluate(load(alpha), method, SELECTION)[M.ID_VAL]

    start = time.perf_counter()
    alpha, curve = select_alpha(id_val_at, setup.wise_strategy, list(setup.wise_grid),
                                setup.wise_evaluations)
    select_s = time.perf_counter() - start
    out: dict[str, float] = {OBJECTIVE: curve[alpha], "wise_alpha": alpha, FINAL: 1.0,
                             "time/wise_select_s": select_s,
                             "wise_evaluations": float(len(curve))}
    if not setup.report_eval:
        model.load_state_dict(theta_ft)
        return out
    # Reporting only, after selection: OOD along the curve (frontier plot), everything at α=1, α*.
    ood_sets = [k for k in evaluator.sets if k.startswith("ood/")]
    ood_at: dict[float, dict[str, float]] = {}   # α -> OOD metrics, reused by the final report
    for a, id_val in sorted(curve.items()):
        out[M.curve(a, M.ID_VAL)] = id_val
        if ood_sets:
            ood_at[a] = evaluator.evaluate(load(a), method, ood_sets)
            for name, value in ood_at[a].items():
                out[M.curve(a, name)] = value
    for prefix, a in (("ft", 1.0), ("wise", alpha)):
        known = ood_at.get(round(a, 4), {})   # same weights, same images: no second pass
        sets = [k for k in evaluator.report_sets if not (known and k in ood_sets)]
        for name, value in {**known, **evaluator.evaluate(load(a), method, sets)}.items():
            out[M.at(prefix, name)] = value
    out["time/report_eval_s"] = time.perf_counter() - start - select_s
    model.load_state_dict(theta_ft)
    return out


class WorkerSession(Protocol):
    """Where a trial's worker reports and what distributes it: Ray Tune's or Train's session
    (:class:`search.ray_session.RaySession`), or :class:`LocalSession` (no Ray)."""

    rank: int
    device: torch.device

    def checkpoint_dir(self) -> ContextManager[str | None]: ...

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None = None) -> None: ...

    def wrap_module(self, module: nn.Module) -> nn.Module: ...

    def prepare_loader(self, loader: DataLoader) -> DataLoader: ...


@dataclass
class LocalSession:
    """A trial in this process without Ray (``search.bench_gpu``, tests): reports are kept in
    ``reports``, checkpoints are written (that is part of a trial's cost) and dropped, and a
    trial starts fresh."""

    device: torch.device
    rank: int = 0
    reports: list[dict[str, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def checkpoint_dir(self) -> Iterator[str | None]:
        yield None

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None = None) -> None:
        self.reports.append(dict(metrics))

    def wrap_module(self, module: nn.Module) -> nn.Module:
        return module

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        return loader


def train_worker(loop_config: dict[str, Any]) -> None:
    """One trial's worker under Ray: Ray Train's per-worker function (a worker group), or run
    directly in the Tune trial actor (``StudySetup.in_trial_process``); ``loop_config`` =
    params, setup, run_name. Ray is imported here only, never by :func:`run_worker`."""
    import logging
    import os

    from .ray_session import RaySession

    if not os.environ.get(VERBOSE_ENV):   # Train's INFO line per saved checkpoint: every epoch
        logging.getLogger("ray.train").setLevel(logging.WARNING)
    setup = StudySetup(**loop_config["setup"])
    if setup.torch_threads:
        torch.set_num_threads(setup.torch_threads)
    run_worker(loop_config, RaySession(setup.in_trial_process, setup.gpus_per_worker))


def run_worker(loop_config: dict[str, Any], session: WorkerSession) -> None:
    """Train, report per epoch, then WiSE-select and report, through ``session``."""
    from trainables.loop import train

    setup = StudySetup(**loop_config["setup"])
    rank, device = session.rank, session.device
    start = time.perf_counter()
    parts = prepare(setup, loop_config["params"], device)
    setup_s = {"time/setup_s": time.perf_counter() - start}   # model + data; on the first report
    fault_index = (faults.trial_index(loop_config["run_name"])
                   if rank == 0 else None)    # None unless a test injects faults
    run_config = {"method": setup.method, "model": setup.model, "pretrained": setup.pretrained,
                  "classes": list(parts.data.spec.classes), "params": loop_config["params"]}

    resume = None
    with session.checkpoint_dir() as ckpt_dir:
        if ckpt_dir is not None:
            state, _, resume = load_checkpoint(ckpt_dir, device)
            parts.model.load_state_dict(state)

    def report(metrics: dict[str, float], state: dict[str, torch.Tensor] | None,
               loop_state=None) -> None:
        # the objective first: Tune's live table shows the first metrics a trial reports
        metrics = {**{k: metrics[k] for k in (OBJECTIVE,) if k in metrics}, **setup_s, **metrics}
        setup_s.clear()
        if rank != 0 or state is None:
            session.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, state, run_config, loop_state)
            session.report(metrics, tmp)

    def on_epoch_end(epoch_report, snapshot) -> None:
        metrics = {M.EPOCH: epoch_report.epoch, M.TRAIN_LOSS: epoch_report.train_loss,
                   "time/epoch_train_s": epoch_report.seconds,
                   **{f"train/{k}": v for k, v in epoch_report.terms.items()}}
        if rank == 0:
            start = time.perf_counter()
            metrics.update(parts.evaluator.evaluate(parts.model, parts.method, SELECTION))
            metrics[OBJECTIVE] = metrics[M.ID_VAL]
            metrics["time/epoch_eval_s"] = time.perf_counter() - start
            faults.inject("raise", epoch_report.epoch, fault_index)
        report(metrics, parts.model.state_dict() if rank == 0 else None, snapshot())
        if rank == 0:
            faults.inject("pause", epoch_report.epoch, fault_index)

    def make_loader(*args, **kwargs):
        from trainables.loop import default_loader
        # Pinned host memory lets the (non-blocking) host-to-GPU copies overlap compute. The
        # loop's sampler already gives this worker its share of each global batch (Ray's
        # prepare_data_loader would replace it with a DistributedSampler), and the loop moves
        # each batch to the device itself.
        return default_loader(*args, **kwargs, pin_memory=device.type == "cuda")

    reports = []
    if not parts.method.trains_nothing and (resume is None or resume.stage_index <
                                            len(parts.method.stages())):
        reports = train(parts.model, parts.method, parts.ctx, parts.data, parts.train_cfg,
                        device=device, eval_transform=parts.bundle.preprocess_val,
                        on_epoch_end=on_epoch_end, resume=resume, make_loader=make_loader,
                        wrap_module=session.wrap_module)
    final: dict[str, float] = {M.EPOCH: (reports[-1].epoch if reports else
                                         (resume.global_epoch if resume else 0)) + 1}
    theta_ft = parts.method.final_state_dict(parts.model)
    if rank == 0:
        final.update(wise_evaluation(parts, theta_ft, setup))
    report(final, theta_ft if rank == 0 else None)


def setup_dict(setup: StudySetup) -> dict[str, Any]:
    """The setup as a plain dict (what travels to the workers in ``train_loop_config``)."""
    return asdict(setup)
