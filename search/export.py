"""Export a study's model: the chosen one at the end of every study, or any trial or soup at any α.

``python -m search.export --output OUTPUT [--trial ID | --soup uniform|greedy] [--alpha A]
--to DIR``

The model is rebuilt with the study's own pieces: ``search.tune.trial.prepare`` (model at θ_zs,
data, evaluator), the trial checkpoint (``trainables.checkpoint``), the soup average
(``search.soups.average`` over the ingredients the study recorded, in its order) and the one WiSE
function (``trainables.wise.interpolate`` over the keys the method trained). It is evaluated on
every report set (for the model card: reporting only, nothing is chosen here) and written as a
model folder (``clipmodel.folder``: open_clip weights, head, metadata, model card).

What the study exports (:func:`chosen_source`) is chosen on ID val only, by
``search.selection.best_trial``: the best trial at its selected α, unless a soup at its selected α
has a strictly higher ID-val accuracy.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipmodel import folder as model_folder
from search.cli import fail
from search.result import TrialRecord
from search.runspec import RunSpec
from search.selection import best_trial
from search.tune.trial import prepare
from trainables import metrics as M
from trainables.checkpoint import WEIGHTS, load_weights
from trainables.errors import InputError
from trainables.heads import zero_shot_weights
from trainables.wise import interpolate

SOUPS = ("uniform", "greedy")


class ExportError(InputError):
    """An export that cannot be made (unknown, failed or stopped trial, bad α); one line."""


@dataclass
class Source:
    """What to export: a trial, a soup of trials or the zero-shot model, at WiSE α ``alpha``.

    ``checkpoints``: the θ_ft ingredients (one for a trial, several for a soup, none for the
    zero-shot model); ``config``: the searched values the model is prepared with; ``at_one``:
    the recorded metrics at α = 1 (the card's fine-tuned row)."""

    kind: str                        # trial | soup | zeroshot
    name: str                        # trial id, soup name, or "zeroshot"
    alpha: float
    checkpoints: list[Path] = field(default_factory=list)
    trial_ids: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    at_one: dict[str, float] = field(default_factory=dict)


def trial_source(trial: TrialRecord, alpha: float | None = None) -> Source:
    """A finished trial at ``alpha`` (default: the α it selected on ID val)."""
    if trial.error:
        raise ExportError(f"trial {trial.trial_id} failed ({trial.error}): it has no model "
                          "to export; pick a finished trial (summary.json lists them)")
    if not (trial.finished and trial.checkpoint):
        raise ExportError(f"trial {trial.trial_id} was stopped before its WiSE selection "
                          "(ASHA or an interrupted study): pick a finished trial")
    result = trial.result
    return Source("trial", trial.trial_id, result.alpha if alpha is None else alpha,
                  [Path(trial.checkpoint)], [trial.trial_id], dict(trial.params),
                  {k: float(v) for k, v in result.finetuned.items()})


def soup_source(summary: dict[str, Any], trials: list[TrialRecord], name: str,
                alpha: float | None = None) -> Source:
    """The study's soup ``name``: the average of its recorded ingredients, in their order."""
    soup = (summary.get("soups") or {}).get(name)
    if soup is None:
        raise ExportError(f"the study made no {name} soup (it needs at least 2 finished trials "
                          "and soups.top_k > 0): export a trial with --trial")
    by_id = {t.trial_id: t for t in trials}
    checkpoints = [Path(by_id[i].checkpoint) for i in soup["trials"]]
    return Source("soup", name, soup["selected_alpha"] if alpha is None else alpha, checkpoints,
                  list(soup["trials"]), dict(summary["best_params"]), dict(soup["soup"]))


def chosen_source(summary: dict[str, Any], trials: list[TrialRecord]) -> Source:
    """The study's model: the best trial or a soup, each at its selected α, by ID val only."""
    if "best_trial" not in summary:
        return Source("zeroshot", "zeroshot", 0.0)
    best = next(t for t in trials if t.trial_id == summary["best_trial"])
    names = [n for n in SOUPS if n in (summary.get("soups") or {})]
    # ID val at each candidate's α*: the trial's objective, each soup + WiSE's ID val
    scores = [{M.ID_VAL: best.result.objective}] + [
        {M.ID_VAL: summary["soups"][n]["wise"][M.ID_VAL]} for n in names]
    pick = best_trial(scores, M.ID_VAL)         # ties keep the trial (listed first)
    return trial_source(best) if pick == 0 else soup_source(summary, trials, names[pick - 1])


def export_model(setup: RunSpec, source: Source, target: Path, summary: dict[str, Any],
                 code_version: str, chosen_by: str = "search.export") -> dict[str, Any]:
    """Rebuild ``source`` at its α, evaluate it for the card and write the folder ``target``.
    ``chosen_by`` says who picked it (the card says so). Returns the model's metadata (as
    stored in model.json)."""
    if not 0.0 <= source.alpha <= 1.0:
        raise ExportError(f"--alpha {source.alpha} is outside [0, 1] (0 = zero-shot, 1 = "
                          "fine-tuned)")
    parts = prepare(setup, source.config, "cpu")
    model, method = parts.model, parts.method
    if source.checkpoints:
        states = [load_weights(c / WEIGHTS) for c in source.checkpoints]
        if len(states) == 1:
            theta_ft = states[0]
        else:
            from search.soups import average
            theta_ft = average(states)
        model.load_state_dict(interpolate(parts.theta_zs, theta_ft, source.alpha,
                                          method.trained_names(model)))
    metrics = parts.evaluator.evaluate(model, method, parts.evaluator.report_sets)   # reporting
    spec = parts.data.spec
    if method.head_kind == "text":      # as the evaluator: class embeddings of this text tower
        head = {"class_embeddings": zero_shot_weights(model.clip, parts.bundle.tokenizer,
                                                      list(spec.classes), list(spec.templates),
                                                      "cpu")}
    else:
        head = {"weight": model.head.weight, "bias": model.head.bias}
    info = {
        "study": summary.get("study"), "method": setup.method, "source": source.kind,
        "name": source.name, "trials": source.trial_ids, "alpha": source.alpha,
        "chosen_by": chosen_by,
        "hyperparameters": {**setup.base_params, **source.config},
        "data": {"name": spec.name, "spec": setup.data}, "templates": list(spec.templates),
        "pretrained": {"model": setup.model, "weights": setup.pretrained},
        "code_version": code_version,
        "metrics": {"zeroshot": summary.get("metrics", {}).get("zeroshot", {}),
                    "alpha_1": source.at_one, "exported": metrics},
    }
    model_folder.write(target, model.clip, setup.model, method.head_kind, head, spec.classes,
                       info, model_card(info, method.head_kind), parts.bundle.tokenizer)
    return {**info, "classes": list(spec.classes)}


_SNIPPET_LOGITS = {
    "linear": 'torch.nn.functional.linear(f, head["weight"], head["bias"])',
    "cosine": ('model.logit_scale.exp() * torch.nn.functional.normalize(f, dim=-1) '
               '@ torch.nn.functional.normalize(head["weight"], dim=-1).T'),
    "text": 'model.logit_scale.exp() * f @ head["class_embeddings"].T',
}


def model_card(info: dict[str, Any], head_kind: str) -> str:
    """The folder's README.md: what the model is, its results, and how to use it."""
    from search.tracking.table import format_table
    alpha = info["alpha"]
    soup = f"the {info['name']} soup of trials {', '.join(info['trials'])}"
    what = {"trial": f"trial {info['name']}", "zeroshot": "the zero-shot model",
            "soup": soup}[info["source"]]
    weights = (f"weights `{info['pretrained']['weights']}`" if info["pretrained"]["weights"]
               else "randomly initialised")
    rows = {"zero-shot (α = 0)": info["metrics"]["zeroshot"]}
    if info["metrics"]["alpha_1"]:
        rows["fine-tuned (α = 1)"] = info["metrics"]["alpha_1"]
    rows[f"this model (α = {alpha:.2f})"] = info["metrics"]["exported"]
    return f"""# {info['study']}: {info['method']} + WiSE-FT, α = {alpha:.2f}

CLIP `{info['pretrained']['model']}` ({weights}) fine-tuned with
`{info['method']}` on the data spec `{info['data']['name']}`: {what}, interpolated with the
zero-shot weights at WiSE-FT α = {alpha:.2f} (θ = (1 − α)·θ_zs + α·θ_ft). Chosen by
{info['chosen_by']}; OOD and zero-shot sets are reported, never used to choose. Code version
`{info['code_version']}`;
hyperparameters, classes and templates are in `model.json`.

## Results (top-1 accuracy, %)

{format_table(rows, markdown=True)}

## Use it with open_clip alone

```python
import json, open_clip, torch
from PIL import Image
from safetensors.torch import load_file

folder = "."                                    # this folder
paths = ["image.png"]                           # your images
model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{{folder}}")
model.eval()
head = load_file(f"{{folder}}/head.safetensors")
classes = json.load(open(f"{{folder}}/model.json"))["classes"]
images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
with torch.no_grad():
    f = model.encode_image(images, normalize=True)                       # (N, D)
    logits = {_SNIPPET_LOGITS[head_kind]}   # (N, K)
print([classes[i] for i in logits.argmax(-1).tolist()])
```

The architecture also travels as `{info['pretrained']['model'].replace('/', '-')}.json`:
`open_clip.add_model_config(folder)` then
`open_clip.create_model_and_transforms("{info['pretrained']['model']}",
pretrained=folder + "/open_clip_model.safetensors")`
loads the same weights (with open_clip's default preprocessing for that architecture; `local-dir:`
uses the preprocessing stored here).
"""


# --- python -m search.export ---------------------------------------------------------------------
def read_trials(output: Path, study: str) -> list[TrialRecord]:
    """The study's trial records, read back from its Tune experiment folder."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    from search.result import trial_records
    return trial_records(ResultGrid(ExperimentAnalysis(str(output / "ray" / study))))


def load_summary(output: Path) -> dict[str, Any]:
    path = output / "summary.json"
    if not path.is_file():
        raise ExportError(f"{path} not found: pass the --output of a finished study")
    summary = json.loads(path.read_text())
    if "setup" not in summary:
        raise ExportError(f"{path} has no study setup (written by an older version): rerun the "
                          "study to export its models")
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.export",
        description="Write a trial (or a soup) of a finished study at any WiSE-FT α as a model "
                    "folder that open_clip loads, with its head, metadata and model card.")
    p.add_argument("--output", type=Path, required=True, help="the study's --output folder")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", help="trial id (default: the study's best trial)")
    which.add_argument("--soup", choices=SOUPS, help="export the study's uniform or greedy soup")
    p.add_argument("--alpha", type=float, default=None,
                   help="WiSE-FT α in [0, 1] (default: the α selected on ID val)")
    p.add_argument("--to", type=Path, required=True,
                   help="the folder to write (replaced if it holds an earlier export)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from search.study import code_version
    try:
        output = args.output.expanduser().resolve()
        summary = load_summary(output)
        if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
            raise ExportError(f"--alpha {args.alpha} is outside [0, 1] (0 = zero-shot, "
                              "1 = fine-tuned)")
        setup = RunSpec.from_dict(summary["setup"])
        trials = read_trials(output, summary["study"]) if "best_trial" in summary else []
        if args.soup:
            source = soup_source(summary, trials, args.soup, args.alpha)
        else:
            trial_id = args.trial or summary.get("best_trial")
            if trial_id is None:
                raise ExportError("the study has no finished trial to export")
            match = [t for t in trials if t.trial_id == trial_id]
            if not match:
                raise ExportError(f"no trial {trial_id!r} in {output}: one of "
                                  f"{sorted(t.trial_id for t in trials)}")
            source = trial_source(match[0], args.alpha)
        info = export_model(setup, source, args.to, summary, code_version())
    except (InputError, model_folder.FolderError, FileNotFoundError) as err:   # bad input:
        fail(str(err))                                                          # one line
    acc = info["metrics"]["exported"].get(M.ID_TEST)
    print(f"Exported {source.kind} {source.name} at α = {source.alpha:.2f} to "
          f"{args.to.expanduser().absolute()} (ID test accuracy {acc:.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
