"""What a study was started with, kept beside its Tune state, and compared by ``--resume``.

``OUTPUT/ray/<study>/study.json`` holds the study's inputs (method, resolved space, data spec and
its content hash, model and weights, budget, seed, concurrency, workers, experiment) and its
status (``running``, ``finished``, ``failed``). ``--resume`` with identical inputs continues the
study; a finished one has nothing to do (exit 0, nothing changed). A larger ``--num-samples``
extends the study (:mod:`search.experiments`: a further Tune experiment on the same Optuna study
and MLflow parent run); the state then also lists the study's experiments. Any other difference
is a one-line error naming it: a resumed Tune experiment cannot take new inputs (Ray 2.60's
``Tuner.restore`` re-reads the param space, searcher and scheduler pickled in ``tuner.pkl`` and
``search_gen_state-*.json``), so a changed input would be silently ignored; a smaller budget
cannot undo trials already run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainables.errors import InputError
from trainables.files import atomic_write_text, sha256_file

STATE_FILE = "study.json"


class ResumeError(InputError):
    """``--resume`` with inputs that differ from the stored study's."""


class NothingToDo(Exception):
    """``--resume`` of a finished study with the same inputs: exit 0 without changing anything."""


def state_path(output: Path, name: str) -> Path:
    return output / "ray" / name / STATE_FILE


def file_digest(path: str | Path) -> str | None:
    """sha256 of a file's bytes (a data spec), or None for a folder / missing file."""
    path = Path(path)
    return sha256_file(path) if path.is_file() else None


def study_inputs(*, method: str, space: dict[str, Any] | None, data: str, model: str,
                 pretrained: str | None, num_samples: int, seed: int, max_concurrent: int,
                 workers_per_trial: int, gpus_per_worker: float, trial_runner: str,
                 experiment: str) -> dict[str, Any]:
    """The inputs a resumed study must share with the stored one (JSON-ready)."""
    if space is not None:     # the resolved content matters, not where the file lies
        space = {k: v for k, v in space.items() if k != "source"}
        space["search"] = {k: v for k, v in space["search"].items()
                           if k not in ("num_samples", "seed", "max_concurrent_trials")}
    inputs = {"method": method, "space": space, "data": data, "data_sha256": file_digest(data),
              "model": model, "pretrained": pretrained, "num_samples": num_samples,
              "seed": seed, "max_concurrent_trials": max_concurrent,
              "workers_per_trial": workers_per_trial, "gpus_per_worker": gpus_per_worker,
              "trial_runner": trial_runner, "experiment": experiment}
    return json.loads(json.dumps(inputs, default=str))     # tuples -> lists, as stored


def read_state(output: Path, name: str) -> dict[str, Any] | None:
    path = state_path(output, name)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise ResumeError(f"--resume: {path} is unreadable; fix: restore it, or start a new "
                          "study with another --output") from None


def write_state(output: Path, name: str, inputs: dict[str, Any], status: str,
                experiments: list[dict[str, Any]] | None = None) -> None:
    """Write the state file whole (temporary file + rename); ``experiments``: the study's Tune
    experiments (:class:`search.experiments.Experiment` as dicts)."""
    path = state_path(output, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"inputs": inputs, "status": status}
    if experiments:
        state["experiments"] = experiments
    atomic_write_text(path, json.dumps(state, indent=2, sort_keys=True))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: value}


_OPTION = {"method": "--method", "data": "--data", "data_sha256": "the content of --data",
           "model": "--model", "pretrained": "--pretrained", "num_samples": "--num-samples",
           "seed": "--seed", "max_concurrent_trials": "--max-concurrent-trials",
           "workers_per_trial": "--workers-per-trial", "gpus_per_worker": "--gpus-per-worker",
           "trial_runner": "--trial-runner", "experiment": "--experiment"}


def check_resume(output: Path, name: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """Compare ``inputs`` with the stored study's and return the stored state (None: a study
    folder without a state file, written by an older version, resumed unchecked). A larger
    ``num_samples`` is an extension, not a difference. Raise ResumeError naming the first
    difference (a smaller ``num_samples`` included), NothingToDo if the study is finished and
    nothing differs."""
    state = read_state(output, name)
    if state is None:
        return None
    old, new = _flat(state.get("inputs", {})), _flat(inputs)
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            top = key.split(".")[0]
            what = f"the space's {key.partition('.')[2]}" if top == "space" else _OPTION.get(
                top, key)
            if key == "num_samples" and (new[key] or 0) > (old[key] or 0):
                continue        # extends the study (search/experiments.py)
            if key == "num_samples":
                raise ResumeError(
                    f"--resume: study {name!r} has a budget of {old[key]} trials; "
                    f"--num-samples {new[key]} cannot shrink it (its trials have run or are "
                    f"planned); fix: resume with --num-samples {old[key]} (or more, to extend "
                    "it)")
            raise ResumeError(
                f"--resume: {what} differs from the stored study {name!r} "
                f"({_short(old.get(key))} then, {_short(new.get(key))} now); fix: rerun with the "
                "study's original inputs, or start a new study (another --study-name or --output)")
    if state.get("status") == "finished" and new.get("num_samples") == old.get("num_samples"):
        raise NothingToDo(f"study {name!r} in {output} is already finished; nothing to do "
                          f"(results: {output / 'summary.json'})")
    return state


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def stored_studies(output: Path) -> list[str]:
    """Names of the studies under ``OUTPUT/ray`` (``train`` is Train's storage; a study's
    extension experiments, ``<study>-more-<k>``, belong to it)."""
    from search.experiments import is_extension_folder
    ray_dir = output / "ray"
    names = sorted(p.name for p in ray_dir.iterdir() if p.is_dir() and p.name != "train") \
        if ray_dir.is_dir() else []
    return [n for n in names if not is_extension_folder(n, names)]
