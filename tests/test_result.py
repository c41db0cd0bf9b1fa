"""search/result.py: the typed trial result and the one codec to and from Tune's flat keys."""
from __future__ import annotations

import pytest

from search.result import TrialRecord, TrialResult, decode, encode, is_final
from search.runspec import RunSpec
from search.selection import best_trial
from search.tune.trial import StudySetup, setup_dict
from trainables import metrics as M


def _result() -> TrialResult:
    return TrialResult(
        objective=82.5, alpha=0.7639,
        finetuned={M.ID_VAL: 81.0, M.ID_TEST: 80.0, M.ood("noisy"): 50.0, M.OOD_AVG: 50.0},
        wise={M.ID_VAL: 82.5, M.ID_TEST: 81.5, M.ood("noisy"): 61.0, M.OOD_AVG: 61.0},
        curve=((0.0, {M.ID_VAL: 70.0, M.ood("noisy"): 60.0}),
               (0.7639, {M.ID_VAL: 82.5, M.ood("noisy"): 61.0}),
               (1.0, {M.ID_VAL: 81.0, M.ood("noisy"): 50.0})),
        evaluations=3, timings={"wise_select_s": 1.5, "report_eval_s": 2.0}, epoch=3,
        extra={"trial_id": "abc_00001", "config": {"lr": 1e-3}, "time_total_s": 12.0})


def test_encode_then_decode_gives_the_result_back():
    result = _result()
    flat = encode(result)
    assert is_final(flat)
    assert decode(flat) == result
    assert encode(decode(flat)) == flat


def test_a_flat_tune_result_decodes_to_its_fields():
    flat = {"objective": 82.5, "epoch": 3, "wise_alpha": 0.6, "final": 1.0,
            "wise_evaluations": 11.0, "time/wise_select_s": 1.5, "time/setup_s": 4.0,
            "wise_curve/0.6000/id_val/acc": 82.5, "wise_curve/0.6000/ood/avg_acc": 61.0,
            "wise_curve/0.30/id_val/acc": 80.0, "ft/id_test/acc": 80.0, "ft/ood/avg_acc": 50.0,
            "wise/id_test/acc": 81.5, "wise/ood/avg_acc": 61.0,
            "training_iteration": 4, "checkpoint_dir_name": "checkpoint_000003"}
    result = decode(flat)
    assert (result.objective, result.alpha, result.evaluations, result.epoch) == (82.5, 0.6, 11, 3)
    assert result.finetuned == {"id_test/acc": 80.0, "ood/avg_acc": 50.0}
    assert result.wise == {"id_test/acc": 81.5, "ood/avg_acc": 61.0}
    assert result.curve == ((0.3, {"id_val/acc": 80.0}),
                            (0.6, {"id_val/acc": 82.5, "ood/avg_acc": 61.0}))
    assert result.timings == {"wise_select_s": 1.5, "setup_s": 4.0}
    assert result.extra == {"training_iteration": 4, "checkpoint_dir_name": "checkpoint_000003"}
    assert not is_final({"objective": 70.0, "epoch": 1})


def test_a_record_is_finished_only_with_its_wise_result_and_no_error():
    final = encode(_result())
    assert TrialRecord.from_metrics("a", {}, final).finished
    assert not TrialRecord.from_metrics("b", {}, {"objective": 80.0, "epoch": 1}).finished
    failed = TrialRecord.from_metrics("c", {}, final, error="RuntimeError: boom")
    assert failed.result is not None and not failed.finished
    assert TrialRecord.from_metrics("a", {"lr": 1.0}, final, None, "/c").as_dict() == {
        "trial_id": "a", "config": {"lr": 1.0}, "metrics": final, "error": None,
        "checkpoint": "/c"}


def test_best_trial_reads_the_objective_and_refuses_ood():
    low, high = _result(), TrialResult(objective=90.0, alpha=0.5, finetuned={}, wise={})
    assert best_trial([low, high, low]) == 1
    with pytest.raises(ValueError, match="ID val only"):
        best_trial([{M.OOD_AVG: 1.0}], M.OOD_AVG)


def test_the_setup_splits_into_the_run_and_how_ray_runs_it():
    run = RunSpec(method="ft", model="m", pretrained=None, data="d", wise_grid=(0.0, 1.0),
                  base_params={"lr": 1e-3})
    setup = StudySetup(run, storage_path="/out/ray", workers_per_trial=2)
    flat = setup_dict(setup)
    assert list(flat)[:5] == ["method", "model", "pretrained", "data", "storage_path"]
    assert flat["wise_grid"] == (0.0, 1.0) and flat["workers_per_trial"] == 2
    as_json = {**flat, "wise_grid": list(flat["wise_grid"])}     # summary.json's copy
    assert StudySetup.from_dict(as_json) == setup
    assert RunSpec.from_dict(as_json) == run
