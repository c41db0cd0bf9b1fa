"""Built-in benchmark specs on fake directory trees with each benchmark's real layout.

Every tree holds a few 8×8 images per class, under the real folder and file names (ImageNet's
WordNet-id folders, ImageNet-V2's index folders, ObjectNet's mappings, DomainNet's split files,
DomainBed's domain folders, CoOp's split files, WILDS' metadata CSVs), but only a handful of
classes. Each image's colour encodes a class index, and a stub model turns that colour into logits,
so the scores below are known exactly: they check the classes, splits, projections (a subset set
scores only over its subset's logits) and metrics (macro-F1, worst-region accuracy, B/N/HM).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from trainables import metrics as M
from trainables.benchmarks import builtin_specs, resolve_data
from trainables.benchmarks.metadata import (clip_benchmark_templates, imagenet_classname,
                                            imagenet_subset, imagenet_wnids)
from trainables.data import DataError, build_task_data, load_spec
from trainables.evaluate import Evaluator
from trainables.models import ModelError, create_clip
from trainables.sampling import NEW_SET
from trainables.scoring import (Scoring, harmonic_mean, macro_f1, project,
                                worst_group_accuracy)

D = 256                                   # stub feature size: one dimension per colour code


# --- images whose colour is a class code, and a stub model that reads it -------------------------
def write_image(path: Path, code: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10 * (code % 25) + 5, 10 * (code // 25) + 5, 0)).save(path)


def decode(img: Image.Image) -> torch.Tensor:
    """The transform: an image -> its code (1,) (centre pixel, robust to JPEG and cropping)."""
    r, g, _ = img.getpixel((img.width // 2, img.height // 2))
    return torch.tensor([round((r - 5) / 10) + 25 * round((g - 5) / 10)])


class StubModel(nn.Module):
    """Features: one-hot of the code. ID logits: 5 on the coded class, 10 on ``distractor``."""

    def __init__(self, num_classes: int, distractor: int | None = None):
        super().__init__()
        self.num_classes, self.distractor = num_classes, distractor

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0].long(), D).float()

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        logits = 5 * feats[:, :self.num_classes]
        if self.distractor is not None:
            logits[:, self.distractor] += 10
        return logits


class StubMethod:
    head_from_text = False

    def trained_names(self, model):
        return []

    def id_logits(self, model, feats, head):
        return model.head(feats)


def evaluate(spec, distractor=None, new_head=None, seed=0, sets=None):
    data = build_task_data(spec, decode, decode, seed=seed)
    ev = Evaluator(data, tokenizer=None, batch_size=64)
    if new_head is not None:                     # zero-shot head of the new classes (base-to-new)
        ev._text_head = lambda model, es, frozen: new_head
    out = ev.evaluate(StubModel(len(spec.classes), distractor), StubMethod(),
                      sets or ev.report_sets)
    return data, out


def labels_of(ds) -> list[int]:
    return [y for _, y in ds.samples]


# --- ImageNet and its shifts ---------------------------------------------------------------------
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


# --- DomainNet -----------------------------------------------------------------------------------
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


# --- DomainBed: leave one domain out ---------------------------------------------------------------
DOMAINBED = {   # spec: (folder, domains, a few of its classes)
    "pacs": ("PACS", ["art_painting", "cartoon", "photo", "sketch"], ["dog", "elephant", "giraffe"]),
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
    _write_csv(tmp_path / "captions.csv", [{"path": str(tmp_path / rel), "caption": "a dog"}])
    monkeypatch.setenv("DOMAINBED_ROOT", str(tmp_path))
    copy = tmp_path / "pacs-arf.yaml"
    copy.write_text(builtin_specs()["pacs"].read_text()
                    + f"anchors: {{captions: {{csv: {tmp_path / 'captions.csv'}}}}}\n")
    spec = load_spec(copy)
    data = build_task_data(spec, decode, decode, anchors=("captions",))
    assert len(data.anchors["captions"]) == 1


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


def test_ucf101_without_templates_names_the_file(tmp_path, monkeypatch):
    write_coop(tmp_path, "ucf101")
    (tmp_path / "ucf101/templates.txt").unlink()
    monkeypatch.setenv("COOP_ROOT", str(tmp_path))
    with pytest.raises(DataError, match="ucf101/templates.txt does not exist"):
        load_spec(builtin_specs()["ucf101"])


# --- WILDS ---------------------------------------------------------------------------------------
def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_iwildcam_macro_f1(tmp_path, monkeypatch):
    base = tmp_path / "iwildcam_v2.0"
    _write_csv(base / "categories.csv", [
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
    _write_csv(base / "metadata.csv", rows)
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
    _write_csv(base / "country_code_mapping.csv", [
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
    _write_csv(base / "rgb_metadata.csv", rows)
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


# --- the generic YAML format: subsets, groups, metrics, shots, base-to-new, ${VAR} ---------------
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
        _write_csv(tmp_path / f"{split}.csv", r)
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


# --- metrics ---------------------------------------------------------------------------------------
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


# --- models ----------------------------------------------------------------------------------------
def test_pretrained_tag_offline_is_a_one_line_model_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="cannot be loaded with HF_HUB_OFFLINE set") as err:
        create_clip("ViT-B-32", "openai")
    assert "\n" not in str(err.value) and "local weights file" in str(err.value)
