"""Dataset specs, manifests, ImageFolders, checkpoints and evaluation metric names."""
from __future__ import annotations

import csv

import pytest
import torch
import yaml

from search.bench.tiny_data import ID_CLASSES, write_tiny_spec
from search.runspec import RunSpec
from search.tune.trial import prepare
from trainables import metrics as M
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.data import DataError, build_task_data, hold_out
from trainables.spec import load_spec


@pytest.fixture
def spec_path(tmp_path):
    return write_tiny_spec(tmp_path / "d", per_class=4)


def _edit(spec_path, fn):
    raw = yaml.safe_load(spec_path.read_text())
    fn(raw)
    spec_path.write_text(yaml.safe_dump(raw))
    return spec_path


def test_spec_loads_every_section(spec_path):
    spec = load_spec(spec_path)
    assert spec.classes == tuple(ID_CLASSES)
    assert set(spec.ood) == {"noisy"} and set(spec.zeroshot) == {"other"}
    assert spec.context["style"].classes == ("plain", "noisy")
    assert spec.test.kind == "imagefolder" and spec.train.kind == "csv"
    data = build_task_data(spec, lambda im: torch.zeros(1), lambda im: torch.zeros(1),
                           anchors=("captions", "retrieved"))
    assert len(data.train) == 4 * 4 and len(data.test) == 4 * 2
    assert {lab for _, lab in data.test.samples} == set(range(4))
    assert len(data.anchors["captions"]) == 16


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(bogus=1), "unknown key"),
    (lambda r: r["id"].update(colour="x"), "unknown key"),
    (lambda r: r["id"].pop("train"), "id.train is required"),
    (lambda r: r["id"].update(train={"csv": "nope.csv"}), "does not exist"),
    (lambda r: r["id"].update(test={"imagefolder": "empty"}), "missing or empty"),
    (lambda r: r["id"].update(templates=["no placeholder"]), "containing {}"),
    (lambda r: r["id"].update(templates="not_a_list_name"), "unknown template list"),
    (lambda r: r["id"].update(classes=ID_CLASSES + ["purple"]), "have no images"),
])
def test_bad_specs_give_one_line_errors(spec_path, edit, message):
    _edit(spec_path, edit)
    with pytest.raises(DataError, match=message) as err:
        spec = load_spec(spec_path)
        build_task_data(spec, lambda im: im, lambda im: im)
    assert "\n" not in str(err.value)


def test_unknown_label_in_manifest(spec_path):
    with (spec_path.parent / "train.csv").open("a", newline="") as fh:
        csv.writer(fh).writerow(["images/train/red_0.png", "purple"])
    with pytest.raises(DataError, match="not one of the spec's classes"):
        build_task_data(load_spec(spec_path), lambda im: im, lambda im: im)


def test_missing_anchor_set_is_reported(spec_path):
    _edit(spec_path, lambda r: r.pop("anchors"))
    with pytest.raises(DataError, match="anchors"):
        build_task_data(load_spec(spec_path), lambda im: im, lambda im: im,
                        anchors=("retrieved",))


def test_val_is_held_out_from_train_when_absent(spec_path):
    _edit(spec_path, lambda r: (r["id"].pop("val"), r["id"].update(val_fraction=0.25)))
    data = build_task_data(load_spec(spec_path), lambda im: im, lambda im: im, seed=3)
    assert len(data.val) == 4 and len(data.train) == 12
    assert not {p for p, _ in data.val.samples} & {p for p, _ in data.train.samples}
    a, b = hold_out(list(zip("abcdefgh", range(8))), 0.25, seed=3)
    assert (a, b) == hold_out(list(zip("abcdefgh", range(8))), 0.25, seed=3)


def test_evaluation_reports_every_set_with_defined_names(spec_path):
    setup = RunSpec(method="ft", model="micro-clip-16", pretrained=None, data=str(spec_path))
    parts = prepare(setup, {})
    out = parts.evaluator.evaluate(parts.model, parts.method, parts.evaluator.report_sets)
    assert set(out) == {M.ID_VAL, M.ID_TEST, M.ood("noisy"), M.OOD_AVG, M.zeroshot("other"),
                        M.ZEROSHOT_AVG, M.context("style")}
    assert out[M.OOD_AVG] == out[M.ood("noisy")]
    assert all(0.0 <= v <= 100.0 for v in out.values())
    only_val = parts.evaluator.evaluate(parts.model, parts.method)
    assert set(only_val) == {M.ID_VAL} and only_val[M.ID_VAL] == out[M.ID_VAL]


def test_checkpoint_round_trip_is_safetensors_and_json(tmp_path):
    state = {"w": torch.randn(3, 2), "step": torch.tensor(7)}
    save_checkpoint(tmp_path / "c", state, {"method": "ft", "lr": 1e-3})
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["config.json",
                                                                 "model.safetensors"]
    loaded, config, loop = load_checkpoint(tmp_path / "c")
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"].item() == 7
    assert config == {"method": "ft", "lr": 1e-3} and loop is None
