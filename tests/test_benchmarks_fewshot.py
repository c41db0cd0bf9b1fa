"""The few-shot suite (CoOp's layouts and split files) on fake trees: k-shot sampling and
base-to-new. Scores are exact: tests/benchmark_stubs.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainables import metrics as M
from trainables.benchmarks import builtin_specs
from trainables.benchmarks.metadata import clip_benchmark_templates
from trainables.data import DataError, build_task_data
from trainables.sampling import NEW_SET
from trainables.spec import load_spec

from .benchmark_stubs import D, decode, evaluate, labels_of, write_image

# --- the few-shot suite (CoOp layouts) -----------------------------------------------------------
COOP = {   # spec: (folder, image dir, split file or None for FGVC, number of classes)
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", 6),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json", 37),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json", 6),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", 102),
    "food101": ("food-101", "images", "split_zhou_Food101.json", 6),
    "fgvc_aircraft": ("fgvc_aircraft", "images", None, 6),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json", 6),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json", 6),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json", 10),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", 6),
}
PER_PART = {"train": 5, "val": 2, "test": 2}


def write_coop(root: Path, name: str) -> list[str]:
    folder, image_dir, split_file, k = COOP[name]
    names = [f"class {y}" for y in range(k)]
    base = root / folder
    split = {p: [] for p in PER_PART}
    for p, n in PER_PART.items():
        for y in range(k):
            for i in range(n):
                rel = f"cls{y:03d}/{p}_{i}.jpg" if split_file else f"{y}{p[0]}{i}"
                write_image(base / image_dir / (rel if split_file else rel + ".jpg"), y)
                split[p].append([rel, y, names[y]])
    if split_file:
        (base / split_file).write_text(json.dumps(split))
    else:                                         # FGVC-Aircraft's own variant files
        (base / "variants.txt").write_text("\n".join(names) + "\n")
        for p, rows in split.items():
            (base / f"images_variant_{p}.txt").write_text(
                "\n".join(f"{rel} {names[y]}" for rel, y, _ in rows) + "\n")
    if name == "ucf101":
        (base / "templates.txt").write_text("a photo of a person doing {}.\n")
    return names


@pytest.mark.parametrize("name", sorted(COOP))
def test_fewshot_kshot_sampling(name, tmp_path, monkeypatch):
    names = write_coop(tmp_path, name)
    monkeypatch.setenv("COOP_ROOT", str(tmp_path))
    monkeypatch.setenv("SHOTS", "2")
    spec = load_spec(builtin_specs()[name])
    k = COOP[name][3]
    assert len(spec.classes) == k and spec.shots == 2 and not spec.new_classes
    shipped = {"oxford_pets": "pets", "oxford_flowers": "flowers", "eurosat": "eurosat"}
    if name in shipped:        # clip_benchmark's names, in label order
        assert spec.classes[0] != names[0] and spec.classes[0][0].isalpha()
    else:
        assert spec.classes == tuple(names)
    if name == "ucf101":
        assert spec.templates == ("a photo of a person doing {}.",)
    else:
        key = {"caltech101": "caltech101", "oxford_pets": "pets", "stanford_cars": "cars",
               "oxford_flowers": "flowers", "food101": "food101", "fgvc_aircraft": "fgvc_aircraft",
               "sun397": "sun397", "dtd": "dtd", "eurosat": "eurosat"}[name]
        assert spec.templates == clip_benchmark_templates(key)
    data = build_task_data(spec, decode, decode, seed=0)
    for ds, per_class in ((data.train, 2), (data.val, 2)):
        assert sorted(labels_of(ds)) == sorted(list(range(k)) * per_class)
    assert len(data.test) == k * PER_PART["test"]
    again = build_task_data(spec, decode, decode, seed=0)
    other = build_task_data(spec, decode, decode, seed=1)
    assert again.train.samples == data.train.samples        # seeded: same draw
    assert other.train.samples != data.train.samples        # another seed: another draw


@pytest.mark.parametrize("name", ["dtd", "fgvc_aircraft"])
def test_fewshot_base_to_new(name, tmp_path, monkeypatch):
    write_coop(tmp_path, name)
    monkeypatch.setenv("COOP_ROOT", str(tmp_path))
    monkeypatch.setenv("BASE_TO_NEW", "true")
    spec = load_spec(builtin_specs()[name])
    assert spec.classes == ("class 0", "class 1", "class 2")            # ceil(6 / 2) base
    assert spec.new_classes == ("class 3", "class 4", "class 5")
    # Zero-shot head of the new classes: right for "class 3" and "class 4", wrong for "class 5".
    new_head = torch.zeros(3, D)
    new_head[0, 3] = new_head[1, 4] = new_head[2, 3] = 1.0
    data, out = evaluate(spec, new_head=new_head)
    assert set(labels_of(data.train)) == {0, 1, 2} and set(labels_of(data.test)) == {0, 1, 2}
    task, new = data.zeroshot[NEW_SET]
    assert task.classes == spec.new_classes and sorted(labels_of(new)) == [0, 0, 1, 1, 2, 2]
    base, novel = 100.0, 100.0 * 4 / 6
    assert out[M.B2N_BASE] == base and out[M.B2N_NEW] == pytest.approx(novel)
    assert out[M.B2N_HM] == pytest.approx(2 * base * novel / (base + novel))


def test_ucf101_without_templates_names_the_file(tmp_path, monkeypatch):
    write_coop(tmp_path, "ucf101")
    (tmp_path / "ucf101/templates.txt").unlink()
    monkeypatch.setenv("COOP_ROOT", str(tmp_path))
    with pytest.raises(DataError, match="ucf101/templates.txt does not exist"):
        load_spec(builtin_specs()["ucf101"])
