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
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from typing import Any, ContextManager, Iterator, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from search.result import OBJECTIVE, TrialResult, encode
from search.runspec import RunSpec
from search.selection import select_alpha
from search.tune import faults
from search.tune.plan import TrialPlan, plan_trial
from trainables import metrics as M
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.config import TrainConfig, split_config
from trainables.data import TaskData, build_task_data
from trainables.device import loader_workers
from trainables.evaluate import SELECTION, Evaluator
from trainables.heads import build_classifier
from trainables.methods import Method, MethodContext, get_method_class
from trainables.models import ClipBundle, create_clip
from trainables.spec import load_spec
from trainables.wise import interpolate

#: set (to 1) by ``search.run --verbose``: workers keep the libraries' INFO lines too
VERBOSE_ENV = "ROBUST_SEARCH_VERBOSE"


@dataclass(frozen=True)
class StudySetup:
    """What every trial of a study shares (static; the searched values come from Tune): the run
    (:class:`search.runspec.RunSpec`) and how Ray runs it: workers, resources, storage."""

    run: RunSpec
    storage_path: str = ""           # OUTPUT/ray: Tune's and Train's folders ("": no Ray)
    workers_per_trial: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_failures: int = 0
    keep_checkpoints: int = 1
    torch_threads: int = 0
    trial_runner: str = "auto"   # auto | actor | worker-group (search.tune.plan)

    @property
    def plan(self) -> TrialPlan:
        """Where this study's trials train and what each reserves
        (:func:`search.tune.plan.plan_trial`): by default a one-worker CPU trial in the reused Tune
        trial actor, every trial with a GPU or several workers in a Ray Train worker group."""
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

    @classmethod
    def from_dict(cls, flat: dict[str, Any]) -> "StudySetup":
        """The inverse of :func:`setup_dict`."""
        run_keys = {f.name for f in fields(RunSpec)}
        return cls(RunSpec.from_dict(flat), **{k: v for k, v in flat.items() if k not in run_keys})


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


def prepare(setup: RunSpec, params: dict[str, Any], device: torch.device | str = "cpu",
            cpus_per_worker: float = 1.0) -> RunParts:
    """Build model, method, data and evaluator for one run; raises ConfigError/DataError early.
    ``cpus_per_worker``: the CPUs reserved for this process (its evaluator's loader workers)."""
    device = torch.device(device)
    cls = get_method_class(setup.method)
    train_cfg, method_params = split_config({**setup.base_params, **params}, cls.Params)
    method = cls(method_params, train_cfg)
    torch.manual_seed(train_cfg.seed)   # a random-init model (tests, from-scratch) is seeded too
    bundle = create_clip(setup.model, setup.pretrained, device)
    if train_cfg.grad_checkpointing:  # recompute activations in backward: less memory, ~30% slower
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
                        device=device, zs_logit_scale=float(bundle.clip.logit_scale.detach().exp()),
                        reference=reference)
    evaluator = Evaluator(data, bundle.tokenizer, device, batch_size=setup.eval_batch_size,
                          num_workers=loader_workers(train_cfg.num_workers,
                                                     cpus_per_worker, device))
    return RunParts(bundle, method, train_cfg, model, theta_zs, ctx, data, evaluator)


def wise_evaluation(parts: RunParts, theta_ft: dict[str, torch.Tensor], setup: RunSpec,
                    label: str = "WiSE") -> TrialResult:
    """Select α on ID val, then evaluate for reporting (the report sets at α = 1 and α*, the
    OOD sets along the curve). ``label`` names the model in the progress lines
    (:mod:`search.progress`)."""
    from search.progress import bar
    model, method, evaluator = parts.model, parts.method, parts.evaluator
    keys = method.trained_names(model)

    def load(alpha: float) -> nn.Module:
        model.load_state_dict(interpolate(parts.theta_zs, theta_ft, alpha, keys))
        return model

    budget = len(setup.wise_grid) if setup.wise_strategy == "grid" else setup.wise_evaluations
    progress = bar(f"{label}: WiSE α search on ID val", budget, "α")

    def id_val_at(alpha: float) -> float:
        value = evaluator.evaluate(load(alpha), method, SELECTION)[M.ID_VAL]
        progress.update()
        return value

    start = time.perf_counter()
    with progress:
        alpha, curve = select_alpha(id_val_at, setup.wise_strategy, list(setup.wise_grid),
                                    setup.wise_evaluations)
    select_s = time.perf_counter() - start
    if not setup.report_eval:       # figure 4 reads the ID-val objective alone
        model.load_state_dict(theta_ft)
        return TrialResult(objective=curve[alpha], alpha=alpha, finetuned={}, wise={},
                           evaluations=len(curve), timings={"wise_select_s": select_s})
    # Reporting only, after selection: OOD along the curve (frontier plot), everything at α=1, α*.
    ood_sets = [k for k, s in evaluator.sets.items() if s.kind == "ood"]
    ood_at: dict[float, dict[str, float]] = {}   # α -> OOD metrics, reused by the final report
    rows = []
    progress = bar(f"{label}: report sets along the curve, at α=1 and α*",
                   (len(curve) if ood_sets else 0) + 2, "pass")
    for a, id_val in sorted(curve.items()):
        if ood_sets:
            ood_at[a] = evaluator.evaluate(load(a), method, ood_sets)
            progress.update()
        rows.append((a, {M.ID_VAL: id_val, **ood_at.get(a, {})}))
    at: dict[float, dict[str, float]] = {}       # 1.0 and α*: every report set
    for a in (1.0, alpha):
        known = ood_at.get(round(a, 4), {})   # same weights, same images: no second pass
        sets = [k for k in evaluator.report_sets if not (known and k in ood_sets)]
        at[a] = {**known, **evaluator.evaluate(load(a), method, sets)}
        progress.update()
    progress.close()
    model.load_state_dict(theta_ft)
    return TrialResult(objective=curve[alpha], alpha=alpha, finetuned=at[1.0], wise=at[alpha],
                       curve=tuple(rows), evaluations=len(curve), timings={
                           "wise_select_s": select_s,
                           "report_eval_s": time.perf_counter() - start - select_s})


class WorkerSession(Protocol):
    """Where a trial's worker reports and what distributes it: Ray Tune's or Train's session
    (:class:`search.tune.session.RaySession`), or :class:`LocalSession` (no Ray)."""

    rank: int
    device: torch.device

    def checkpoint_dir(self) -> ContextManager[str | None]: ...

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None = None) -> None: ...

    def wrap_module(self, module: nn.Module) -> nn.Module: ...

    def prepare_loader(self, loader: DataLoader) -> DataLoader: ...


@dataclass
class LocalSession:
    """A trial in this process without Ray (``search.bench.gpu``, tests): reports are kept in
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

    from search.tune.session import RaySession

    if not os.environ.get(VERBOSE_ENV):   # Train's INFO line per saved checkpoint: every epoch
        logging.getLogger("ray.train").setLevel(logging.WARNING)
    setup = StudySetup.from_dict(loop_config["setup"])
    if setup.torch_threads:
        torch.set_num_threads(setup.torch_threads)
    run_worker(loop_config, RaySession(setup.in_trial_process, setup.gpus_per_worker))


class TrialReporter:
    """What a trial's worker reports through its session: every epoch's metrics (rank 0 adds
    ID val, the objective, and a checkpoint of the weights and the loop's state), then the final
    result with θ_ft. Rank 0 also fires the faults a test injects (:mod:`search.tune.faults`)."""

    def __init__(self, session: WorkerSession, parts: RunParts, run_config: dict[str, Any],
                 setup_s: float, fault_index: int | None) -> None:
        self.session, self.parts, self.run_config = session, parts, run_config
        self.pending = {"time/setup_s": setup_s}   # model + data: on the first report only
        self.fault_index = fault_index

    def report(self, metrics: dict[str, float], state: dict[str, torch.Tensor] | None,
               loop_state: Any = None) -> None:
        # the objective first: Tune's live table shows the first metrics a trial reports
        metrics = {**{k: metrics[k] for k in (OBJECTIVE,) if k in metrics}, **self.pending,
                   **metrics}
        self.pending = {}
        if self.session.rank != 0 or state is None:
            self.session.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, state, self.run_config, loop_state)
            self.session.report(metrics, tmp)

    def on_epoch_end(self, epoch_report: Any, snapshot: Any) -> None:
        """``trainables.loop.train``'s hook: ``snapshot()`` is the loop's state to resume from."""
        parts, rank, epoch = self.parts, self.session.rank, epoch_report.epoch
        metrics = {M.EPOCH: epoch, M.TRAIN_LOSS: epoch_report.train_loss,
                   "time/epoch_train_s": epoch_report.seconds,
                   **{f"train/{k}": v for k, v in epoch_report.terms.items()}}
        if rank == 0:
            start = time.perf_counter()
            metrics.update(parts.evaluator.evaluate(parts.model, parts.method, SELECTION))
            metrics[OBJECTIVE] = metrics[M.ID_VAL]
            metrics["time/epoch_eval_s"] = time.perf_counter() - start
            faults.inject("raise", epoch, self.fault_index)
        self.report(metrics, parts.model.state_dict() if rank == 0 else None, snapshot())
        if rank == 0:
            faults.inject("pause", epoch, self.fault_index)


def run_worker(loop_config: dict[str, Any], session: WorkerSession) -> None:
    """Train, report per epoch, then WiSE-select and report, through ``session``."""
    from trainables.loop import default_loader, train

    setup = StudySetup.from_dict(loop_config["setup"])
    rank, device = session.rank, session.device
    start = time.perf_counter()
    parts = prepare(setup.run, loop_config["params"], device, setup.cpus_per_worker)
    run_config = {"method": setup.run.method, "model": setup.run.model,
                  "pretrained": setup.run.pretrained, "classes": list(parts.data.spec.classes),
                  "params": loop_config["params"]}
    reporter = TrialReporter(session, parts, run_config, time.perf_counter() - start,
                             faults.trial_index(loop_config["run_name"]) if rank == 0 else None)
    resume = None
    with session.checkpoint_dir() as ckpt_dir:
        if ckpt_dir is not None:
            state, _, resume = load_checkpoint(ckpt_dir, device)
            parts.model.load_state_dict(state)
    reports = []
    if not parts.method.trains_nothing and (resume is None or resume.stage_index <
                                            len(parts.method.stages())):
        # Pinned host memory lets the (non-blocking) host-to-GPU copies overlap compute. The
        # loop's sampler already gives this worker its share of each global batch (Ray's
        # prepare_data_loader would replace it with a DistributedSampler), and the loop moves
        # each batch to the device itself.
        reports = train(parts.model, parts.method, parts.ctx, parts.data, parts.train_cfg,
                        device=device, eval_transform=parts.bundle.preprocess_val,
                        on_epoch_end=reporter.on_epoch_end, resume=resume,
                        make_loader=partial(default_loader, pin_memory=device.type == "cuda"),
                        wrap_module=session.wrap_module)
    epoch = (reports[-1].epoch if reports else (resume.global_epoch if resume else 0)) + 1
    theta_ft = parts.method.final_state_dict(parts.model)
    if rank != 0:
        reporter.report({M.EPOCH: epoch}, None)
        return
    result = wise_evaluation(parts, theta_ft, setup.run,
                             label=loop_config["run_name"].replace("train-", "trial "))
    reporter.report(encode(replace(result, epoch=epoch)), theta_ft)


#: the order of a setup's flat fields (as summary.json and MLflow's config.json have them)
_FLAT_ORDER = ("method", "model", "pretrained", "data", "storage_path", "wise_strategy",
               "wise_grid", "wise_evaluations", "workers_per_trial", "gpus_per_worker",
               "cpus_per_worker", "max_failures", "keep_checkpoints", "eval_batch_size",
               "torch_threads", "trial_runner", "report_eval", "base_params")


def setup_dict(setup: StudySetup) -> dict[str, Any]:
    """The setup as one flat plain dict: what travels to the workers in ``train_loop_config``,
    what summary.json stores and ``search.export`` rebuilds the run from
    (:meth:`StudySetup.from_dict`, :meth:`search.runspec.RunSpec.from_dict`)."""
    flat = {**asdict(setup.run), **{k: v for k, v in asdict(setup).items() if k != "run"}}
    return dict(sorted(flat.items(), key=lambda kv: _FLAT_ORDER.index(kv[0])))
