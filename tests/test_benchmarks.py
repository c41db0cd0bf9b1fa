"""Built-in benchmark specs on fake directory trees with each benchmark's real layout: WILDS
(metadata CSVs, macro-F1, worst-region accuracy), the generic YAML extensions, the metric
functions, and a check that every built-in spec has a test. ImageNet / DomainNet / DomainBed are
in test_benchmarks_shifts.py, CoOp's few-shot suite in test_benchmarks_fewshot.py.

Every tree holds a few 8×8 images per class under the real folder and file names, but only a
handful of classes. Each image's colour encodes a class index and a stub model turns that colour
into logits (tests/benchmark_stubs.py), so the scores below are known exactly.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainables import metrics as M
from trainables.benchmarks import builtin_specs, resolve_data
from trainables.data import DataError
from trainables.models import ModelError, create_clip
from trainables.scoring import Scoring, harmonic_mean, macro_f1, worst_group_accuracy
from trainables.spec import load_spec

from .benchmark_stubs import evaluate, labels_of, write_csv, write_image
from .test_benchmarks_fewshot import COOP
from .test_benchmarks_shifts import DOMAINBED


# --- WILDS ----------------------------------------------------------------------------------------
def test_iwildcam_macro_f1(tmp_path, monkeypatch):
    base = tmp_path / "iwildcam_v2.0"
    write_csv(base / "categories.csv", [
        {"y": y, "category_id": cid, "name": n} for y, (cid, n) in
        enumerate([(0, "empty"), (6, "tayassu pecari"), (10, "meleagris ocellata"),
                   (101, "crax rubra")])])
    rows = []
    for split, labels in (("train", [0, 0, 1, 2, 3, 3]), ("id_val", [0, 1, 2, 3]),
                          ("id_test", [0, 1, 2, 3]), ("val", [1]), ("test", [0, 0, 1, 1, 2, 3])):
        for y in labels:
            fn = f"8b{len(rows):06d}-21bc-11ea-a13a-137349068a90.jpg"
            write_image(base / "train" / fn, y)
            rows.append({"split": split, "location_remapped": 1, "location": 3, "sequence_id": 7,
                         "datetime": "2013-06-05 05:44:19.000", "y": y, "filename": fn})
    write_csv(base / "metadata.csv", rows)
    monkeypatch.setenv("WILDS_ROOT", str(tmp_path))
    spec = load_spec(builtin_specs()["iwildcam"])
    assert spec.classes == ("empty", "tayassu pecari", "meleagris ocellata", "crax rubra")
    data, out = evaluate(spec, distractor=0)               # everything is predicted "empty"
    assert (len(data.train), len(data.val), len(data.test)) == (6, 4, 4)
    assert labels_of(data.ood["iwildcam-ood"]) == [0, 0, 1, 1, 2, 3]
    # OOD: class 0 has tp 2, fp 4 -> F1 = 4 / 8; classes 1-3 have F1 0 -> macro 12.5%.
    f1 = M.with_kind(M.ood("iwildcam-ood"), M.MACRO_F1)
    assert out[M.ood("iwildcam-ood")] == pytest.approx(100 / 3)
    assert out[f1] == pytest.approx(12.5) and out[M.with_kind(M.OOD_AVG, M.MACRO_F1)] == out[f1]
    assert M.with_kind(M.ID_VAL, M.MACRO_F1) in out


def test_fmow_worst_region(tmp_path, monkeypatch):
    base = tmp_path / "fmow_v1.1"
    write_csv(base / "country_code_mapping.csv", [
        {"alpha-2": a2, "alpha-3": a3, "region": r} for a2, a3, r in
        (("US", "USA", "Americas"), ("FR", "FRA", "Europe"), ("NG", "NGA", "Africa"))])
    cats = ["airport", "airport_hangar", "dam"]
    spec_rows = [   # (split, year, category, country)
        ("train", 2010, "airport", "USA"), ("train", 2011, "dam", "FRA"),
        ("train", 2012, "airport_hangar", "NGA"), ("seq", 2012, "dam", "USA"),
        ("val", 2009, "airport", "USA"), ("val", 2011, "dam", "NGA"),
        ("test", 2008, "airport_hangar", "FRA"), ("test", 2012, "dam", "USA"),
        ("train", 2014, "dam", "USA"), ("val", 2014, "airport", "FRA"),    # 2013-2015: not used
        ("test", 2017, "airport", "USA"), ("test", 2017, "airport", "USA"),  # Americas 2/2
        ("test", 2016, "airport", "FRA"), ("test", 2016, "dam", "FRA"),      # Europe 1/2
        ("test", 2017, "airport", "NGA"), ("test", 2017, "dam", "NGA"),
        ("test", 2018, "dam", "NGA"),                                        # Africa 1/3
        ("test", 2017, "dam", "ATA")]                                        # Other 0/1
    rows = []
    for i, (split, year, cat, cc) in enumerate(spec_rows):
        rows.append({"split": split, "img_filename": f"{cat}_{i}_rgb.jpg", "category": cat,
                     "country_code": cc, "timestamp": f"{year}-03-04T10:11:12Z",
                     "cloud_cover": 0})
        write_image(base / "images" / f"rgb_img_{i}.png", cats.index(cat))
    write_csv(base / "rgb_metadata.csv", rows)
    monkeypatch.setenv("WILDS_ROOT", str(tmp_path))
    spec = load_spec(builtin_specs()["fmow"])
    assert spec.classes == ("airport", "airport hangar", "dam")
    data, out = evaluate(spec, distractor=0)               # everything is predicted "airport"
    assert [Path(p).name for p, _ in data.train.samples] == [
        "rgb_img_0.png", "rgb_img_1.png", "rgb_img_2.png"]  # 2014 and seq rows left out
    assert len(data.val) == 2 and len(data.test) == 2 and len(data.ood["fmow-ood"]) == 8
    assert data.ood["fmow-ood"].groups[-1] == "Other"
    worst = M.with_kind(M.ood("fmow-ood"), M.WORST_GROUP_ACC)
    assert out[M.ood("fmow-ood")] == 50.0
    assert out[worst] == pytest.approx(100 / 3)            # Africa; "Other" (0%) is left out
    assert out[M.with_kind(M.ID_TEST, M.WORST_GROUP_ACC)] == 0.0


# --- the generic YAML format: subsets, groups, metrics, shots, base-to-new, ${VAR} ----------------
def test_generic_spec_extensions(tmp_path, monkeypatch):
    classes = ["a", "b", "c", "d"]
    rows = {"train": [], "test": [], "shift": []}
    for split, per in (("train", 3), ("test", 2), ("shift", 2)):
        for y, c in enumerate(classes):
            if split == "shift" and c not in ("b", "c"):
                continue
            for i in range(per):
                rel = f"img/{split}/{c}{i}.png"
                write_image(tmp_path / rel, y)
                rows[split].append({"path": rel, "label": c, "group": f"g{i}"})
    for split, r in rows.items():
        write_csv(tmp_path / f"{split}.csv", r)
    (tmp_path / "prompts.txt").write_text("a {} thing.\nan image of {}.\n")
    (tmp_path / "spec.yaml").write_text(
        "id:\n  classes: [a, b, c, d]\n  templates_file: prompts.txt\n"
        "  train: {csv: train.csv}\n  test: {csv: test.csv}\n  val_fraction: ${VF:-0.25}\n"
        "  metrics: [macro_f1, worst_group_acc]\n  shots: 2\n"
        "ood:\n  shift: {csv: shift.csv, subset: [b, c], metrics: [worst_group_acc]}\n")
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.val_fraction == 0.25 and spec.templates == ("a {} thing.", "an image of {}.")
    assert spec.scoring["ood/shift"].projection == ((1,), (2,))
    data, out = evaluate(spec, distractor=0)
    assert sorted(labels_of(data.train)) == [0, 0, 1, 1, 2, 2, 3, 3]        # 2 shots
    assert labels_of(data.ood["shift"]) == [0, 0, 1, 1]                     # subset positions
    assert out[M.ood("shift")] == 100.0                     # "a" (the distractor) is not in it
    assert out[M.ID_TEST] == 25.0
    assert out[M.with_kind(M.ID_TEST, M.WORST_GROUP_ACC)] == 25.0
    assert out[M.with_kind(M.ID_TEST, M.MACRO_F1)] == pytest.approx(100 * (2 * 2 / 10) / 4)
    assert M.with_kind(M.ID_VAL, M.WORST_GROUP_ACC) in out                  # held-out val groups
    monkeypatch.setenv("VF", "0.5")
    assert load_spec(tmp_path / "spec.yaml").val_fraction == 0.5
    text = (tmp_path / "spec.yaml").read_text().replace("  shots: 2\n", "  base_to_new: true\n")
    (tmp_path / "spec.yaml").write_text(text.split("ood:")[0])
    b2n = load_spec(tmp_path / "spec.yaml")
    assert b2n.classes == ("a", "b") and b2n.new_classes == ("c", "d")


def test_missing_environment_variable_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    with pytest.raises(DataError, match="set the environment variable IMAGENET_ROOT") as err:
        load_spec(builtin_specs()["imagenet"])
    assert "\n" not in str(err.value)


def test_resolve_data(tmp_path, monkeypatch):
    monkeypatch.delenv("DOMAINBED_ROOT", raising=False)
    assert resolve_data("pacs") == builtin_specs()["pacs"]
    assert resolve_data(f"pacs:{tmp_path}") == builtin_specs()["pacs"]
    import os
    assert os.environ["DOMAINBED_ROOT"] == str(tmp_path.resolve())
    (tmp_path / "mine.yaml").write_text("id: {}\n")
    assert resolve_data(tmp_path / "mine.yaml") == (tmp_path / "mine.yaml").resolve()
    with pytest.raises(DataError, match="built-in"):
        resolve_data("no-such-benchmark")


# --- metrics --------------------------------------------------------------------------------------
def test_metric_functions_match_hand_values():
    from sklearn.metrics import f1_score
    pred = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    true = torch.tensor([0, 1, 1, 2, 2, 0, 0])
    ref = 100 * f1_score(true, pred, average="macro", labels=torch.unique(true).numpy())
    assert macro_f1(pred, true) == pytest.approx(ref)
    groups = ["x", "x", "y", "y", "y", "z", "z"]
    assert worst_group_accuracy(pred, true, groups) == 0.0                 # z: 0 of 2
    assert worst_group_accuracy(pred, true, groups, exclude=["z"]) == 50.0   # x: 1 of 2
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="unknown metric kind"):
        Scoring(metrics=("top5",))


def test_every_builtin_spec_is_tested():
    tested = {"imagenet", "imagenet_fewshot", "domainnet", "iwildcam", "fmow"} | set(DOMAINBED) \
        | set(COOP)
    assert set(builtin_specs()) == tested
    assert len(COOP) == 10 and len(DOMAINBED) == 4


# --- models ---------------------------------------------------------------------------------------
def test_pretrained_tag_offline_is_a_one_line_model_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="cannot be loaded with HF_HUB_OFFLINE set") as err:
        create_clip("ViT-B-32", "openai")
    assert "\n" not in str(err.value) and "local weights file" in str(err.value)
