"""Built-in benchmark specs with domain shifts on fake trees with their real layouts: ImageNet and
its shifts, DomainNet, DomainBed (leave one domain out). Scores are exact:
tests/benchmark_stubs.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainables import metrics as M
from trainables.benchmarks import builtin_specs
from trainables.benchmarks.metadata import imagenet_classname, imagenet_subset, imagenet_wnids
from trainables.data import DataError, build_task_data
from trainables.sampling import NEW_SET
from trainables.scoring import project
from trainables.spec import load_spec

from .benchmark_stubs import decode, evaluate, labels_of, write_csv, write_image

# --- ImageNet and its shifts ----------------------------------------------------------------------
TENCH, GOLDFISH, STINGRAY, ROOSTER, GOLDFINCH, ROBIN = (
    "n01440764", "n01443537", "n01498041", "n01514668", "n01531178", "n01558993")
ID_WNIDS = sorted([TENCH, GOLDFISH, STINGRAY, ROOSTER, GOLDFINCH, ROBIN])   # ID index = position


def write_imagenet(root: Path, train: str = "imagenet/train", test: str = "imagenet/val",
                   per_class: int = 4, shifts: bool = True) -> None:
    code = {w: i for i, w in enumerate(ID_WNIDS)}
    for w in ID_WNIDS:
        for i in range(per_class):
            write_image(root / train / w / f"{w}_{i}.JPEG", code[w])
        for i in range(2):
            write_image(root / test / w / f"ILSVRC2012_val_{code[w]:05d}{i}.JPEG", code[w])
    if not shifts:
        return
    index = {w: imagenet_wnids().index(w) for w in ID_WNIDS}
    for w in (TENCH, STINGRAY):                                   # V2: folders named by index
        write_image(root / f"imagenetv2-matched-frequency-format-val/{index[w]}/a.jpeg", code[w])
    for w in (TENCH, ROOSTER):
        write_image(root / "sketch" / w / "sketch_0.JPEG", code[w])
    for w in (GOLDFISH, GOLDFINCH):                               # R: two of its 200 classes
        write_image(root / "imagenet-r" / w / "art_0.jpg", code[w])
    for w in (STINGRAY, ROBIN):
        write_image(root / "imagenet-a" / w / "0.000116_stingray.jpg", code[w])
    on = root / "objectnet-1.0"
    (on / "mappings").mkdir(parents=True)
    (on / "mappings/folder_to_objectnet_label.json").write_text(json.dumps(
        {"fish_in_tank": "Aquarium Fish", "bird_feeder_bird": "Small Bird", "chair": "Chair",
         "squeegee": "Squeegee"}))
    (on / "mappings/objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {"Aquarium Fish": "goldfish, Carassius auratus; tench, Tinca tinca",
         "Small Bird": "goldfinch, Carduelis carduelis; American robin, Turdus migratorius",
         "Chair": "folding chair"}))                  # folding chair is not an ID class: dropped
    names_2012 = [f"unused {i}" for i in range(15)]
    names_2012[10:15] = ["goldfish, Carassius auratus", "tench, Tinca tinca",
                         "goldfinch, Carduelis carduelis", "American robin, Turdus migratorius",
                         "folding chair"]
    (on / "mappings/imagenet_to_label_2012_v2").write_text("\n".join(names_2012) + "\n")
    (on / "mappings/pytorch_to_imagenet_2012_id.json").write_text(json.dumps(
        {"1": 10, "0": 11, "11": 12, "15": 13, "559": 14}))
    for folder, w in (("fish_in_tank", GOLDFISH), ("fish_in_tank", GOLDFISH),
                      ("bird_feeder_bird", ROBIN), ("bird_feeder_bird", ROBIN),
                      ("chair", TENCH), ("squeegee", TENCH)):
        n = len(list((on / "images" / folder).glob("*"))) if (on / "images" / folder).is_dir() \
            else 0
        write_image(on / "images" / folder / f"{n}.png", code[w])


@pytest.fixture
def imagenet_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_imagenet(root)
    monkeypatch.setenv("IMAGENET_ROOT", str(root))
    return root


def test_imagenet_classes_splits_and_projections(imagenet_root):
    spec = load_spec(builtin_specs()["imagenet"])
    assert spec.classes == tuple(imagenet_classname(w) for w in ID_WNIDS)
    assert spec.classes[0] == "tench" and spec.templates[0] == "a bad photo of a {}."
    assert set(spec.ood) == {"imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a",
                             "objectnet"}
    idx = {w: i for i, w in enumerate(ID_WNIDS)}
    r = [w for w in imagenet_subset("imagenet_r") if w in idx]
    assert r == [GOLDFISH, STINGRAY, GOLDFINCH]                  # the 200-class list ∩ ID classes
    assert spec.scoring["ood/imagenet-r"].projection == tuple((idx[w],) for w in r)
    assert spec.scoring["ood/imagenet-a"].projection == ((idx[STINGRAY],), (idx[GOLDFINCH],),
                                                         (idx[ROBIN],))
    on = spec.scoring["ood/objectnet"]
    assert spec.ood["objectnet"].classes == ("small bird", "aquarium fish")   # folder order
    assert on.projection == ((idx[GOLDFINCH], idx[ROBIN]), (idx[TENCH], idx[GOLDFISH]))
    assert on.crop_border == 2
    assert spec.scoring["ood/imagenet-v2"].projection is None

    data, out = evaluate(spec, distractor=idx[TENCH])
    n_train = 6 * 4
    assert len(data.val) == max(1, round(0.02 * n_train)) and len(data.train) == n_train - 1
    assert sorted(labels_of(data.test)) == sorted(list(range(6)) * 2)
    assert labels_of(data.ood["imagenet-v2"]) == [idx[TENCH], idx[STINGRAY]]
    assert sorted(labels_of(data.ood["imagenet-r"])) == [0, 2]            # subset positions
    assert len(data.ood["objectnet"]) == 4                      # chair / squeegee dropped
    # Unprojected sets: the distractor (tench, outside R/A) wins, so only tench images are right.
    assert out[M.ID_TEST] == pytest.approx(100 / 6)
    assert out[M.ood("imagenet-v2")] == 50.0 and out[M.ood("imagenet-sketch")] == 50.0
    # R/A score only over their subset's logits: the tench logit is out of reach.
    assert out[M.ood("imagenet-r")] == 100.0 and out[M.ood("imagenet-a")] == 100.0
    # ObjectNet: max over mapped classes; tench belongs to "aquarium fish", so birds are lost.
    assert out[M.ood("objectnet")] == 50.0
    assert out[M.OOD_AVG] == pytest.approx((50 + 50 + 100 + 100 + 50) / 5)


def test_imagenet_layout_errors(imagenet_root, tmp_path):
    write_image(imagenet_root / "imagenet-r" / ROOSTER / "x.jpg", 0)      # not an R class
    with pytest.raises(DataError, match="imagenet_r WordNet id") as err:
        load_spec(builtin_specs()["imagenet"])
    assert "\n" not in str(err.value)


def test_project_takes_the_max_over_mapped_classes():
    logits = torch.tensor([[1.0, 7.0, 3.0, 9.0]])
    assert project(logits, ((0,), (2,))).tolist() == [[1.0, 3.0]]
    assert project(logits, ((0, 1), (2, 3))).tolist() == [[7.0, 9.0]]


# --- DomainNet ------------------------------------------------------------------------------------
DN_CLASSES = ["aircraft_carrier", "bee", "zebra"]


def write_domainnet(root: Path, domains=("clipart", "real", "sketch")) -> None:
    for d in domains:
        for part, n in (("train", 4), ("test", 2)):
            lines = []
            for y, c in enumerate(DN_CLASSES):
                for i in range(n):
                    rel = f"{d}/{c}/{d}_{y:03d}_{part}{i:06d}.jpg"
                    write_image(root / rel, y)
                    lines.append(f"{rel} {y}")
            (root / f"{d}_{part}.txt").write_text("\n".join(lines) + "\n")


def test_domainnet_trains_on_one_domain_and_tests_the_others(tmp_path, monkeypatch):
    write_domainnet(tmp_path)
    monkeypatch.setenv("DOMAINNET_ROOT", str(tmp_path))
    spec = load_spec(builtin_specs()["domainnet"])
    assert spec.classes == ("aircraft carrier", "bee", "zebra")
    assert set(spec.ood) == {"clipart", "sketch"}
    assert "a sketch of a {}." in spec.context_templates
    data, out = evaluate(spec)
    assert all("/real/" in p for p, _ in data.train.samples + data.val.samples + data.test.samples)
    assert len(data.train) + len(data.val) == 12 and len(data.test) == 6
    assert all("/sketch/" in p for p, _ in data.ood["sketch"].samples)
    assert out[M.OOD_AVG] == 100.0
    monkeypatch.setenv("DOMAINNET_SOURCE", "sketch")
    assert set(load_spec(builtin_specs()["domainnet"]).ood) == {"clipart", "real"}


# --- DomainBed: leave one domain out --------------------------------------------------------------
DOMAINBED = {   # spec: (folder, domains, a few of its classes)
    "pacs": ("PACS", ["art_painting", "cartoon", "photo", "sketch"],
             ["dog", "elephant", "giraffe"]),
    "officehome": ("office_home", ["Art", "Clipart", "Product", "Real World"],
                   ["Alarm_Clock", "Backpack", "Batteries"]),
    "vlcs": ("VLCS", ["Caltech101", "LabelMe", "SUN09", "VOC2007"], ["bird", "car", "chair"]),
    "terraincognita": ("terra_incognita", ["location_100", "location_38", "location_43",
                                           "location_46"], ["bobcat", "coyote", "empty"]),
}


@pytest.mark.parametrize("name", sorted(DOMAINBED))
def test_domainbed_leave_one_domain_out(name, tmp_path, monkeypatch):
    folder, domains, class_folders = DOMAINBED[name]
    for d in domains:
        for y, c in enumerate(class_folders):
            for i in range(5):
                write_image(tmp_path / folder / d / c / f"{i}.jpg", y)
    monkeypatch.setenv("DOMAINBED_ROOT", str(tmp_path))
    spec = load_spec(builtin_specs()[name])
    default = domains[0]                                   # each spec's default held-out domain
    assert set(spec.ood) == {default}
    assert spec.classes == tuple(c.replace("_", " ").lower() for c in class_folders)
    assert f"a {default.replace('_', ' ').lower()} of a {{}}." in spec.context_templates
    data, out = evaluate(spec, seed=0)
    ood = data.ood[default].samples
    assert len(ood) == 15 and all(f"/{default}/" in p for p, _ in ood)
    id_paths = [p for ds in (data.train, data.val, data.test) for p, _ in ds.samples]
    assert len(id_paths) == 45 and not any(f"/{default}/" in p for p in id_paths)
    assert len(data.test) == round(0.1 * 45)
    other = build_task_data(spec, decode, decode, seed=1)        # ID test is fixed, val is not
    assert other.test.samples == data.test.samples and other.val.samples != data.val.samples
    assert out[M.ood(default)] == 100.0
    var = {"pacs": "PACS", "officehome": "OFFICEHOME", "vlcs": "VLCS",
           "terraincognita": "TERRA"}[name] + "_TEST_DOMAIN"
    monkeypatch.setenv(var, domains[2])
    assert set(load_spec(builtin_specs()[name]).ood) == {domains[2]}


def test_builtin_spec_takes_anchor_sets(tmp_path, monkeypatch):
    """ARF's anchor preparation writes a copy of the spec with ``anchors:`` (absolute paths)."""
    folder, domains, class_folders = DOMAINBED["pacs"]
    for d in domains:
        write_image(tmp_path / folder / d / class_folders[0] / "0.jpg", 0)
    rel = f"{folder}/{domains[1]}/{class_folders[0]}/0.jpg"
    write_csv(tmp_path / "captions.csv", [{"path": str(tmp_path / rel), "caption": "a dog"}])
    monkeypatch.setenv("DOMAINBED_ROOT", str(tmp_path))
    copy = tmp_path / "pacs-arf.yaml"
    copy.write_text(builtin_specs()["pacs"].read_text()
                    + f"anchors: {{captions: {{csv: {tmp_path / 'captions.csv'}}}}}\n")
    spec = load_spec(copy)
    data = build_task_data(spec, decode, decode, anchors=("captions",))
    assert len(data.anchors["captions"]) == 1


def test_imagenet_fewshot_layout(tmp_path, monkeypatch):
    write_imagenet(tmp_path, "imagenet/images/train", "imagenet/images/val", per_class=5,
                   shifts=False)
    monkeypatch.setenv("COOP_ROOT", str(tmp_path))
    monkeypatch.setenv("SHOTS", "1")
    monkeypatch.setenv("BASE_TO_NEW", "1")
    spec = load_spec(builtin_specs()["imagenet_fewshot"])
    assert len(spec.classes) == 3 and len(spec.new_classes) == 3 and not spec.ood
    data = build_task_data(spec, decode, decode)
    assert sorted(labels_of(data.train)) == [0, 1, 2] and sorted(labels_of(data.val)) == [0, 1, 2]
    assert len(data.zeroshot[NEW_SET][1]) == 3 * 2
