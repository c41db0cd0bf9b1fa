"""After a study's trials: the summary (the report's rows, the chosen trial), the soups of its
finished trials, and the console table. The trials come as :class:`search.result.TrialRecord`;
what summary.json holds is plain JSON (``search.export`` reads it back)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from search.result import TrialRecord, encode_curve, finite
from search.runspec import RunSpec
from trainables import metrics as M

log = logging.getLogger(__name__)


def trial_counts(trials: list[TrialRecord]) -> dict[str, int]:
    """How many trials ran, finished (their WiSE selection), failed, and were stopped early."""
    return {"total": len(trials), "finished": sum(1 for t in trials if t.finished),
            "failed": sum(1 for t in trials if t.error),
            "stopped_early": sum(1 for t in trials if not t.error and t.result is None)}


def chosen(finished: list[TrialRecord]) -> tuple[TrialRecord, dict[str, Any]]:
    """The best finished trial (ID val at its α*, :func:`search.selection.best_trial`) and its
    summary fields: ``best_trial``, ``best_params``, ``selected_alpha`` and the rows
    ``finetuned`` (α = 1) and ``wise`` (α*)."""
    from search.selection import best_trial
    best = finished[best_trial([t.result for t in finished])]
    result = best.result
    return best, {"best_trial": best.trial_id, "best_params": best.params,
                  "selected_alpha": result.alpha,
                  "rows": {"finetuned": finite(result.finetuned), "wise": finite(result.wise)}}


def soups(run: RunSpec, finished: list[TrialRecord], best: TrialRecord, top_k: int
          ) -> dict[str, Any]:
    """The uniform (top-k by ID val) and greedy soups of the finished trials with a checkpoint,
    each WiSE-selected on ID val then evaluated on the report sets; {} with fewer than 2."""
    from search.soups import Ingredient, greedy_soup, uniform_soup
    from search.tune.trial import prepare, wise_evaluation
    ingredients = [Ingredient(t.trial_id, t.result.finetuned[M.ID_VAL], Path(t.checkpoint))
                   for t in finished if t.checkpoint]
    if len(ingredients) < 2:
        return {}
    parts = prepare(run, best.params, "cpu")
    ev = parts.evaluator

    from search.progress import bar as progress_bar
    bar = progress_bar("greedy soup: ID val of each candidate soup", unit="soup")

    def id_val_of(state) -> float:
        parts.model.load_state_dict(state)
        bar.update()
        return ev.evaluate(parts.model, parts.method)[M.ID_VAL]

    out = {}
    uni_ids, uni = uniform_soup(ingredients, top_k)
    greedy_ids, greedy, _ = greedy_soup(ingredients, id_val_of)
    bar.close()
    done = {}                                   # same ingredients, same soup
    for name, ids, state in (("uniform", uni_ids, uni), ("greedy", greedy_ids, greedy)):
        key = frozenset(ids)
        if key not in done:
            log.info("%s soup of %d trial(s): WiSE selection on ID val, then the report sets",
                     name, len(ids))
            done[key] = wise_evaluation(parts, state, run, label=f"{name} soup")
        result = done[key]
        out[name] = {"trials": ids, "selected_alpha": result.alpha,
                     "soup": finite(result.finetuned), "wise": finite(result.wise),
                     "curve": encode_curve(result.curve)}
    return out


def print_summary(summary: dict[str, Any], wall_s: float, output: Path, tracking_uri: str) -> None:
    """The study's outcome on the console: counts, errors, the chosen trial, the results table,
    the exported model and where MLflow and Optuna show the rest."""
    from search.tracking.table import format_table
    rows = {"zero-shot": summary["metrics"]["zeroshot"]}
    if "finetuned" in summary["metrics"]:
        rows["fine-tuned (α=1)"] = summary["metrics"]["finetuned"]
        rows[f"WiSE (α={summary['selected_alpha']:.2f})"] = summary["metrics"]["wise"]
    soups = summary.get("soups") or {}
    for name, soup in soups.items():
        n = len(soup["trials"])
        rows[f"{name} soup ({n} trial{'s' if n != 1 else ''})"] = soup["soup"]
        rows[f"{name} soup + WiSE (α={soup['selected_alpha']:.2f})"] = soup["wise"]
    print()
    t = summary["trials"]
    print(f"Study {summary['study']}: method {summary['method']}, {t['total']} trials "
          f"({t['finished']} finished, {t['stopped_early']} stopped early by the scheduler, "
          f"{t['failed']} failed) in {wall_s:.0f} s")
    for trial_id, error in (summary.get("errors") or {}).items():
        print(f"Failed trial {trial_id}: {error}")
    if "best_trial" in summary:
        from search.tracking.names import trial_run_name
        print(f"Best trial {summary['best_trial']} (selected on ID val): "
              + trial_run_name(summary["best_trial"], summary["best_params"]).partition(" ")[2])
    print("Top-1 accuracy in % (ID test, each shift and their mean, zero-shot sets):")
    print(format_table(rows))
    same = [sorted(s["trials"]) for s in soups.values()]
    if len(same) == 2 and same[0] == same[1]:
        print(f"The {' and '.join(soups)} soups took the same {len(same[0])} trials "
              "(the greedy soup kept every candidate): one model, the same numbers.")
    _print_where(summary, output, tracking_uri)


def _print_where(summary: dict[str, Any], output: Path, uri: str) -> None:
    export = summary.get("export") or {}
    if export.get("path"):
        registered = (f", registered as {export['registered_model']} version "
                      f"{export['version']}" if export.get("registered_model") else "")
        print(f"\nModel: {export['path']} ({export['source']} {export['name']} at α = "
              f"{export['alpha']:.2f}; MLflow {export['mlflow_model_uri']}{registered})")
    elif export.get("error"):
        print(f"\nModel export failed: {export['error']}")
    print(f"\nSummary: {output / 'summary.json'}")
    print(f"MLflow: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
          if uri.startswith("sqlite") else f"MLflow: open {uri}")
    if "optuna" in summary:
        optuna_info = summary["optuna"]
        importances = summary.get("importances")
        print(f"Optuna: optuna-dashboard {optuna_info['storage']} (study "
              f"{optuna_info['study_name']}); importances: "
              + (", ".join(f"{k} {v:.2f}" for k, v in importances.items())
                 if isinstance(importances, dict) else str(importances)))


__all__ = ["chosen", "print_summary", "soups", "trial_counts"]
