"""Command-line arguments of ``python -m search.run`` and the one-line error exit."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

from trainables.errors import InputError
from trainables.yaml_io import YamlError, load_yaml

EXIT_USAGE = 2
MAX_MESSAGE_CHARS = 2000


class UsageError(InputError):
    """Bad input found before anything ran; reported as one line with exit status 2."""


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on one line to stderr and exit with status 2."""
    text = " ".join(str(message).split())
    if len(text) > MAX_MESSAGE_CHARS:    # a value quoted in the message can be long
        text = text[:MAX_MESSAGE_CHARS - 3] + "..."
    print(f"error: {text}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["lr=1e-4", "search.num_samples=3"]`` -> ``{"lr": 1e-4, "search.num_samples": 3}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r} is not key=value (e.g. --set lr=1e-4)")
        try:
            out[key.strip()] = load_yaml(value, f"--set {key.strip()}")
        except YamlError as err:
            raise UsageError(f"{err} (quote mappings: --set 'lr={{loguniform: [1e-5, 1e-3]}}')"
                             ) from None
    return out


def build_parser() -> argparse.ArgumentParser:
    from search.cli_help import Parser
    p = Parser(
        prog="python -m search.run",
        description="Search the hyperparameters and WiSE-FT mixing coefficient of a robust "
                    "fine-tuning method for CLIP with Ray Tune + Optuna over Ray Train; every "
                    "trial is recorded in MLflow. Selection reads ID validation data only.",
        epilog="Example: python -m search.run --method car-ft --space spaces/car.yaml "
               "--num-samples 4.  Review: mlflow ui --backend-store-uri sqlite:///OUTPUT/mlflow.db")
    _task_arguments(p.add_argument_group("what to search"))
    _trial_arguments(p.add_argument_group("trials and resources"))
    _record_arguments(p.add_argument_group("where results go"))
    _study_arguments(p.add_argument_group("the study"))
    _model_and_console_arguments(p.add_argument_group("the chosen model and the console"))
    return p


def _task_arguments(g: argparse._ArgumentGroup) -> None:
    """The method, its space, the data and the zero-shot model."""
    from search.cli_help import method_names
    g.add_argument("--method", required=True, choices=method_names(),
                   help="fine-tuning method (docs/methods.md)")
    g.add_argument("--space", type=Path,
                   help="search-space YAML (spaces/*.yaml); its 'method' must equal --method "
                        "(optional for zeroshot)")
    g.add_argument("--data", type=Path,
                   help="dataset spec YAML: your own, or a built-in benchmark "
                        "trainables/benchmarks/specs/NAME.yaml (imagenet, domainnet, pacs, "
                        "officehome, vlcs, terraincognita, the 11 few-shot sets, iwildcam, fmow), "
                        "whose data root comes from its ${..._ROOT} variable (see "
                        "trainables/benchmarks/README.md) (default: the embedded generated world, "
                        "created on first use under $ROBUST_SEARCH_CACHE or "
                        "~/.cache/robust-clip-search)")
    g.add_argument("--model", default=None,
                   help="open_clip architecture name (default: tiny-clip-32, the embedded CLIP)")
    g.add_argument("--pretrained", default=None,
                   help="open_clip pretrained tag (downloaded when online) or a local "
                        ".safetensors file (default: the embedded tiny CLIP's weights)")


def _trial_arguments(g: argparse._ArgumentGroup) -> None:
    """How many trials, and where and on what Ray runs them."""
    g.add_argument("--num-samples", type=int, help="number of trials (default: the space's)")
    g.add_argument("--max-concurrent-trials", type=int,
                   help="trials running at once (default: the space's, else 1)")
    g.add_argument("--workers-per-trial", type=int, default=1,
                   help="Ray Train workers (DDP processes) per trial; batch_size is the GLOBAL "
                        "batch, split evenly among them (each takes batch_size / workers; it "
                        "must divide), and contrastive losses use the whole global batch")
    g.add_argument("--trial-runner", choices=["auto", "actor", "worker-group"], default="auto",
                   help="where a trial trains: 'worker-group' = a Ray Train TorchTrainer worker "
                        "group (a fresh process per trial, 20-60 s start-up each on a small "
                        "machine); 'actor' = directly in the reused Tune trial actor (one worker "
                        "only); 'auto' (default) = the actor for a one-worker CPU trial, a worker "
                        "group for every trial with a GPU or several workers")
    g.add_argument("--worker-group", dest="trial_runner", action="store_const",
                   const="worker-group", help="same as --trial-runner worker-group")
    g.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="GPUs per Train worker (bf16 autocast on CUDA); fractions such as 0.25 "
                        "pack small models onto one GPU (0: CPU)")
    g.add_argument("--cpus-per-worker", type=float, default=None,
                   help="CPUs reserved (and torch threads) per Train worker (default: on a "
                        "local Ray, this machine's cores shared among concurrent workers; with "
                        "--address, 1)")
    g.add_argument("--address", default=None,
                   help="join an existing Ray cluster (e.g. auto or HOST:6379); default: start "
                        "a local Ray instance. With more than one node, --output must be on "
                        "storage every node sees and --tracking-uri an MLflow server (checked)")


def _record_arguments(g: argparse._ArgumentGroup) -> None:
    """The output folder, MLflow and the Optuna storage."""
    g.add_argument("--output", type=Path, default=Path("runs/latest"),
                   help="directory for everything the run writes: mlflow.db, ray/ (trials, "
                        "checkpoints), summary.json, plots")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default sqlite:///OUTPUT/mlflow.db; use an "
                        "http://127.0.0.1:PORT server for clusters)")
    g.add_argument("--experiment", default="robust-ft-search", help="MLflow experiment name")
    g.add_argument("--optuna-storage", default=None, metavar="URL",
                   help="Optuna storage of the study's sampler history, opened by "
                        "optuna.load_study and optuna-dashboard (default "
                        "sqlite:///OUTPUT/optuna.db; e.g. postgresql://... for clusters; never "
                        "the MLflow store)")


def _study_arguments(g: argparse._ArgumentGroup) -> None:
    """Its name, seed, warm start, resume, retries and overrides."""
    g.add_argument("--warm-start", default=None, metavar="OUTPUT|URL",
                   help="start from a finished study of the same method and searched "
                        "parameters: its best configurations run first (as many as TPE's "
                        "start-up trials). OUTPUT: that study's --output; URL: an Optuna "
                        "storage, with --warm-start-study")
    g.add_argument("--warm-start-study", default=None, metavar="NAME",
                   help="the study to warm-start from in --warm-start URL")
    g.add_argument("--study-name", default=None,
                   help="name of the study (Tune experiment, Optuna study, MLflow parent run); "
                        "default: <method>-search")
    g.add_argument("--seed", type=int, default=None,
                   help="seed of the sampler and of every trial (default: the space's)")
    g.add_argument("--resume", action="store_true",
                   help="continue the study in --output after a crash or kill")
    g.add_argument("--max-failures", type=int, default=0,
                   help="times a failed trial's training is retried from its last checkpoint "
                        "(by Tune; with a worker group also by Train for a crashed worker, so a "
                        "trial that always fails runs up to (N+1)^2 times)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the space: a parameter (lr=1e-4 fixes it; "
                        "lr='{loguniform: [1e-5, 1e-3]}' re-ranges it) or a setting "
                        "(search.num_samples=3, wise.strategy=golden); repeatable")


def _model_and_console_arguments(g: argparse._ArgumentGroup) -> None:
    """Registering the chosen model; how much is printed."""
    g.add_argument("--register-model", default=None, metavar="NAME",
                   help="register the chosen model (OUTPUT/model, logged on the study's MLflow "
                        "run) under NAME in the MLflow Model Registry (default: the study name)")
    g.add_argument("--no-register", action="store_true",
                   help="log the chosen model on the study's MLflow run without registering it")
    g.add_argument("--quiet", action="store_true", help="less Ray progress output")
    g.add_argument("--verbose", action="store_true",
                   help="INFO messages of the libraries too (open_clip, MLflow, Ray)")
