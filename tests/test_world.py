"""The embedded world: deterministic generation, split contents, captions, shipped weights."""
from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trainables.world import captions as C  # noqa: E402
from trainables.world import generate as G  # noqa: E402
from trainables.world import render as R  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "trainables" / "assets"
WEIGHTS = ASSETS / "tiny-clip-32.safetensors"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("w") / "world"
    G.ensure_world(root, seed=0, sizes="small", workers=1)
    return root


def _rows(root: Path, rel: str) -> list[dict[str, str]]:
    with open(root / rel, newline="") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(world: Path, tmp_path: Path) -> None:
    again = G.generate_world(tmp_path / "again", seed=0, sizes="small", workers=1).parent
    assert _files(again) == _files(world)
    other = G.generate_world(tmp_path / "other", seed=1, sizes="small", workers=1).parent
    a, b = _files(world), _files(other)
    assert a.keys() == b.keys()
    pngs = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != b[k] for k in pngs) > 0.9 * len(pngs)
    assert not list(tmp_path.glob("*.tmp-*"))  # written atomically: no temporary folders left


def test_ensure_world_is_idempotent(world: Path) -> None:
    spec = world / "world.yaml"
    before = spec.stat().st_mtime_ns
    assert G.ensure_world(world, seed=0, sizes="small") == spec
    assert spec.stat().st_mtime_ns == before


def test_spec_layout_and_paths(world: Path) -> None:
    spec = yaml.safe_load((world / "world.yaml").read_text())
    assert spec["name"] == "embedded-world"
    assert spec["id"]["classes"] == R.SHAPES[:10]
    assert spec["zeroshot"]["heldout-classes"]["classes"] == R.SHAPES[10:]
    assert spec["context"]["style"]["classes"] == ["photo", "sketch", "cartoon", "painting"]
    assert spec["id"]["context_templates"] == [f"a {s} of a {{}}." for s in R.STYLES]
    assert set(spec["ood"]) == {"sketch", "cartoon", "painting"}
    for t in spec["id"]["templates"]:  # no other-style words in the ID prompts
        assert "{}" in t and not any(w in t for w in ("sketch", "cartoon", "painting", "drawing"))
    csvs = [spec["id"][k]["csv"] for k in ("train", "val", "test")]
    csvs += [v["csv"] for v in spec["ood"].values()]
    csvs += [spec["zeroshot"]["heldout-classes"]["test"]["csv"],
             spec["context"]["style"]["test"]["csv"], spec["anchors"]["captions"]["csv"],
             spec["anchors"]["candidates"]["csv"], spec["pretrain"]["corpus"]["csv"]]
    for rel in csvs:
        rows = _rows(world, rel)
        assert rows, rel
        for row in rows:
            assert (world / row["path"]).is_file(), row["path"]
    img = Image.open(world / _rows(world, csvs[0])[0]["path"])
    assert img.size == (32, 32) and img.mode == "RGB"


def _styles(split: str, rows: list[dict[str, str]]) -> set[str]:
    """Styles of the rows' images, re-derived from the generator (the CSV holds path,label)."""
    spec = G.SPECS[split]
    return {G.sample_meta(spec, 0, int(Path(r["path"]).stem))[0]["style"] for r in rows}


@pytest.mark.parametrize("split,rel,classes,styles", [
    ("id-train", "id/train.csv", R.SHAPES[:10], {"photo"}),
    ("id-val", "id/val.csv", R.SHAPES[:10], {"photo"}),
    ("id-test", "id/test.csv", R.SHAPES[:10], {"photo"}),
    ("ood-sketch", "ood/sketch.csv", R.SHAPES[:10], {"sketch"}),
    ("ood-cartoon", "ood/cartoon.csv", R.SHAPES[:10], {"cartoon"}),
    ("ood-painting", "ood/painting.csv", R.SHAPES[:10], {"painting"}),
    ("zeroshot", "zeroshot/heldout-classes.csv", R.SHAPES[10:], set(R.STYLES)),
])
def test_split_classes_and_styles(world: Path, split: str, rel: str, classes: list[str],
                                  styles: set[str]) -> None:
    rows = _rows(world, rel)
    assert len(rows) == G.split_sizes("small")[split]
    assert {r["label"] for r in rows} == set(classes)
    assert _styles(split, rows) == styles


def test_context_labels_are_styles(world: Path) -> None:
    rows = _rows(world, "context/style.csv")
    assert {r["label"] for r in rows} == set(R.STYLES)
    assert all(r["label"] == s for r, s in zip(rows, [
        G.sample_meta(G.SPECS["context"], 0, int(Path(r["path"]).stem))[0]["style"] for r in rows]))


def test_corpus_and_captions(world: Path) -> None:
    corpus = _rows(world, "pretrain/corpus.csv")
    assert list(corpus[0]) == G.CORPUS_COLUMNS
    assert {r["label"] for r in corpus} == set(R.SHAPES)
    assert {r["style"] for r in corpus} == set(R.STYLES)
    train = _rows(world, "id/train.csv")
    caps = _rows(world, "id/captions.csv")
    assert [r["path"] for r in caps] == [r["path"] for r in train]
    assert np.mean([t["label"] in c["caption"] for t, c in zip(train, caps)]) > 0.8
    cands = _rows(world, "pool/candidates.csv")
    assert list(cands[0]) == ["path", "caption"] and all(r["caption"] for r in cands)


def _metas(n: int) -> list[dict]:
    spec = G.SPECS["pretrain"]
    return [G.sample_meta(spec, 0, i)[0] for i in range(n)]


def test_captions_mention_class_most_of_the_time() -> None:
    rng = np.random.default_rng(0)
    metas = _metas(400)
    texts = [C.caption(m, rng) for m in metas]
    assert 0.8 < np.mean([m["label"] in t for m, t in zip(metas, texts)]) < 1.0
    assert len(set(texts)) > 300  # randomised templates
    noisy = [C.noisy_caption(m, rng) for m in metas]
    assert np.mean([m["label"] in t for m, t in zip(metas, noisy)]) > 0.9


def test_noisy_caption_gets_attributes_wrong() -> None:
    rng = np.random.default_rng(1)
    metas = _metas(200)
    wrong = [C.noisy_caption(m, rng, noise=1.0) for m in metas]
    assert not any(f" {m['colour']} " in f" {t} " for m, t in zip(metas, wrong))
    clean = [C.noisy_caption(m, rng, noise=0.0) for m in metas]
    assert all(m["label"] in t for m, t in zip(metas, clean))


def test_every_shape_draws_inside_the_canvas() -> None:
    for shape in R.SHAPES:
        small = R.shape_mask(shape, 32, 32, R.RADIUS["small"][0], 15).mean()
        large = R.shape_mask(shape, 32, 32, R.RADIUS["large"][1], -15).mean()
        assert 0.01 < small < large < 0.8, shape


def test_tokenizer_context_length() -> None:
    import open_clip

    import trainables.models  # noqa: F401  (registers tiny-clip-32)

    tok = open_clip.get_tokenizer("tiny-clip-32")
    assert tok.context_length == 20
    assert tok(["a pencil sketch of a small red star"]).shape == (1, 20)


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="tiny-clip-32.safetensors not produced yet "
                    "(python -m trainables.world.pretrain)")
def test_shipped_weights_match_record_and_load() -> None:
    record = json.loads((ASSETS / "tiny-clip-32.json").read_text())
    assert record["model"] == "tiny-clip-32"
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == record["sha256"]
    assert WEIGHTS.stat().st_size <= 25_000_000
    from trainables.models import create_clip

    bundle = create_clip("tiny-clip-32", pretrained=str(WEIGHTS))
    x = bundle.preprocess_val(Image.new("RGB", (32, 32))).unsqueeze(0)
    assert bundle.clip.encode_image(x).shape == (1, 128)
