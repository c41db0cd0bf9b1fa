"""ARF anchor preparation: FAISS retrieval, candidate readers, the captioner, the cache, the CLI.

Everything is tiny: a random-init micro CLIP (16 px) saved to a weights file, 16 px generated
images, a random-init ViT+GPT-2 captioner built here, FAISS on a few thousand generated vectors.
"""
from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from search import prepare
from search.anchors import build as A
from search.anchors.retrieval import (
    IndexSettings,
    exact_topk,
    iter_shards,
    read_table,
    recall_at_k,
    retrieve,
    unique_candidates,
)
from trainables.data import read_pairs
from trainables.spec import load_spec

faiss.omp_set_num_threads(1)
MODEL = "micro-clip-16"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _png(rng: np.random.Generator, colour: tuple[int, int, int]) -> Image.Image:
    arr = np.clip(np.array(colour) + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _write_csv(path: Path, rows: list[dict[str, str]], cols: list[str]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def write_spec(root: Path, per_class: int = 3, candidates: int = 12) -> Path:
    """A spec with 3 classes, ``per_class`` training images each, captions and a candidate pool."""
    rng = np.random.default_rng(0)
    rows, cands = [], []
    for split, n in (("train", per_class), ("test", 1)):
        for c, rgb in COLOURS.items():
            for i in range(n):
                rel = f"img/{split}/{c}{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                _png(rng, rgb).save(root / rel)
                rows.append({"path": rel, "label": c, "split": split})
    for i in range(candidates):
        c = list(COLOURS)[i % 3]
        rel = f"pool/cand{i}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _png(rng, COLOURS[c]).save(root / rel)
        cands.append({"path": rel, "caption": f"a {c} thing number {i}"})
    for split in ("train", "test"):
        _write_csv(root / f"{split}.csv", [r for r in rows if r["split"] == split],
                   ["path", "label"])
    _write_csv(root / "captions.csv", [{"path": r["path"], "caption": f"a {r['label']} square"}
                                       for r in rows if r["split"] == "train"], ["path", "caption"])
    _write_csv(root / "pool" / "candidates.csv", cands, ["path", "caption"])  # paths: from root
    spec = {"name": "tiny-anchors",
            "id": {"classes": list(COLOURS), "templates": ["a photo of a {}."],
                   "train": {"csv": "train.csv"}, "val": {"csv": "test.csv"},
                   "test": {"csv": "test.csv"}},
            "anchors": {"captions": {"csv": "captions.csv"},
                        "candidates": {"csv": "pool/candidates.csv"}}}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root / "spec.yaml"


def save_weights(path: Path, seed: int) -> Path:
    from safetensors.torch import save_file

    from trainables.models import create_clip
    torch.manual_seed(seed)
    clip = create_clip(MODEL, pretrained=None).clip
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("weights")
    return save_weights(root / "a.safetensors", 0), save_weights(root / "b.safetensors", 1)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ROBUST_SEARCH_CACHE", str(tmp_path / "cache"))
    A.COUNTS.clear()
    return tmp_path / "cache" / "anchors"


# --- FAISS ---------------------------------------------------------------------------------
def test_exact_index_equals_numpy_topk():
    rng = np.random.default_rng(0)
    q, c = _unit(rng.normal(size=(40, 24))), _unit(rng.normal(size=(700, 24)))
    brute = np.argsort(-(q @ c.T), axis=1, kind="stable")[:, :5]
    found = retrieve(q, c, 5, IndexSettings("exact"))
    np.testing.assert_array_equal(found.ids, brute)
    np.testing.assert_allclose(found.scores, np.take_along_axis(q @ c.T, brute, 1), atol=1e-5)
    np.testing.assert_array_equal(exact_topk(q, c, 5, chunk=64)[1], brute)   # chunked merge
    assert found.recall == 1.0 and found.recall_queries == 0


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_recall_is_measured_and_high(kind):
    rng = np.random.default_rng(1)
    centres = _unit(rng.normal(size=(16, 32)))
    c = _unit(centres[rng.integers(0, 16, 3000)] + 0.15 * rng.normal(size=(3000, 32)))
    q = _unit(centres[rng.integers(0, 16, 300)] + 0.15 * rng.normal(size=(300, 32)))
    found = retrieve(q, c, 4, IndexSettings(kind, nprobe=8, recall_sample=200))
    exact = np.argsort(-(q @ c.T), axis=1)[:, :4]
    assert found.recall_queries == 200
    rows = np.sort(np.random.default_rng(0).choice(300, 200, replace=False))
    assert found.recall == pytest.approx(recall_at_k(found.ids[rows], exact[rows]))
    assert found.recall > 0.8


def test_recall_and_dedup_helpers():
    assert recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[2, 1], [3, 5]])) == 0.75
    np.testing.assert_array_equal(unique_candidates(np.array([[3, 1], [1, 3], [7, -1]])),
                                  [1, 3, 7])


# --- candidate readers -------------------------------------------------------------------------
def _shard(path: Path, samples: list[tuple[str, Image.Image, str]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, img, caption in samples:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            for name, data in ((f"{key}.png", buf.getvalue()), (f"{key}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_yield_every_pair(tmp_path, cache):
    rng = np.random.default_rng(0)
    expected = {}
    for s in range(2):
        samples = [(f"{s:03d}{i:04d}", _png(rng, (40 * i, 20, 200)), f"shard {s} item {i}")
                   for i in range(3)]
        _shard(tmp_path / f"cc-{s}.tar", samples)
        expected.update({f"cc-{s}/{k}.png": c for k, _, c in samples})
    shards = sorted(tmp_path.glob("cc-*.tar"))
    got = {f"{stem}/{name}": cap for stem, name, data, cap in iter_shards(shards)}
    assert got == expected
    pairs = A.extract_shards(shards, cache / "shards" / "x")
    assert sorted(c for _, c in pairs) == sorted(expected.values())
    assert all(Image.open(p).size == (16, 16) for p, _ in pairs)
    A.extract_shards(shards, cache / "shards" / "x")
    assert A.COUNTS["extract"] == 1                               # extracted once, then reused


def test_shards_as_candidates_end_to_end(tmp_path, cache, weights):
    rng = np.random.default_rng(0)
    for s in range(2):
        _shard(tmp_path / f"cc-{s}.tar", [(f"{s}{i:03d}", _png(rng, (60 * i, 90, 30 * s)),
                                           f"web caption {s} {i}") for i in range(4)])
    spec = write_spec(tmp_path / "data", per_class=1, candidates=1)
    derived = A.prepare_anchors(spec, A.AnchorSettings(
        model=MODEL, pretrained=str(weights[0]), candidates=str(tmp_path / "cc-*.tar"), k=2,
        progress=False))
    retrieved = read_pairs(load_spec(derived).anchors["retrieved"], derived.parent)
    assert retrieved and all(Path(p).is_file() and Path(p).is_relative_to(cache / "shards")
                             and c.startswith("web caption") for p, c in retrieved)


def test_candidate_tables_csv_tsv_and_cc3m(tmp_path):
    (tmp_path / "a.tsv").write_text("caption\tpath\nred thing\timgs/1.png\n")
    (tmp_path / "cc3m.tsv").write_text("a dog on grass\thttp://x/1.jpg\nblue sky\tlocal/2.jpg\n")
    (tmp_path / "b.csv").write_text("path,caption,extra\nimgs/1.png,\"red, thing\",0\n")
    assert read_table(tmp_path / "a.tsv") == [(str(tmp_path / "imgs/1.png"), "red thing")]
    assert read_table(tmp_path / "b.csv") == [(str(tmp_path / "imgs/1.png"), "red, thing")]
    assert read_table(tmp_path / "cc3m.tsv") == [("http://x/1.jpg", "a dog on grass"),
                                                 (str(tmp_path / "local/2.jpg"), "blue sky")]


# --- cache -----------------------------------------------------------------------------------
def test_cache_reuse_and_invalidation(tmp_path, cache, weights):
    spec = write_spec(tmp_path / "data")
    base = A.AnchorSettings(model=MODEL, pretrained=str(weights[0]), progress=False)
    first = A.prepare_anchors(spec, base)
    work = {"embed_images": 1, "embed_texts": 1, "retrieve": 1}
    assert {k: A.COUNTS[k] for k in work} == work
    assert A.prepare_anchors(spec, base) == first               # same inputs: nothing computed
    assert {k: A.COUNTS[k] for k in work} == work and A.COUNTS["hit"] == 1

    k2 = A.prepare_anchors(spec, A.AnchorSettings(**{**vars(base), "k": 2}))
    assert k2 != first and A.COUNTS["retrieve"] == 2              # only the search reruns
    assert A.COUNTS["embed_images"] == 1 and A.COUNTS["embed_texts"] == 1

    with (spec.parent / "pool" / "candidates.csv").open("a") as fh:   # the candidate set changes
        fh.write("pool/cand0.png,one more caption\n")
    A.prepare_anchors(spec, base)
    assert A.COUNTS["embed_texts"] == 2 and A.COUNTS["retrieve"] == 3
    assert A.COUNTS["embed_images"] == 1

    A.prepare_anchors(spec, A.AnchorSettings(**{**vars(base), "pretrained": str(weights[1])}))
    assert A.COUNTS["embed_images"] == 2 and A.COUNTS["embed_texts"] == 3
    assert not list(cache.glob("*.tmp-*")) and not list(cache.glob("*/*.tmp-*"))


def test_ensure_retrieved_gives_a_loadable_spec(tmp_path, cache, weights):
    spec_path = write_spec(tmp_path / "data", candidates=30)
    derived = A.ensure_retrieved(spec_path, MODEL, str(weights[0]))
    assert derived.parent.parent == cache
    spec = load_spec(derived)
    retrieved = read_pairs(spec.anchors["retrieved"], spec.root)
    candidates = set(read_pairs(load_spec(spec_path).anchors["candidates"],
                                load_spec(spec_path).root))
    assert 4 <= len(retrieved) <= 9 * 4 and len(set(retrieved)) == len(retrieved)
    assert set(retrieved) <= candidates and all(Path(p).is_file() for p, _ in retrieved)
    captions = read_pairs(spec.anchors["captions"], spec.root)
    assert len(captions) == 9 and all(c.endswith("square") for _, c in captions)
    raw = yaml.safe_load(derived.read_text())
    assert Path(raw["id"]["train"]["csv"]).is_absolute() and raw["name"] == "tiny-anchors"
    # the manifests' image rows are relative to the data root, not to the cache entry
    from trainables.data import read_samples
    samples = read_samples(spec.train, spec.classes, spec.root)
    assert len(samples) == 9 and all(Path(p).is_file() for p, _ in samples)
    neighbours = np.load(derived.parent / "neighbours.npz")
    assert neighbours["ids"].shape == (9, 4)
    assert A.ensure_retrieved(spec_path, MODEL, str(weights[0])) == derived


# --- captioner ---------------------------------------------------------------------------------
def tiny_captioner(path: Path) -> Path:
    """A random-init ViT encoder + GPT-2 decoder with a word-level tokenizer, saved to ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GPT2Config,
        PreTrainedTokenizerFast,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )
    words = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "a", "red", "green", "blue", "photo", "square"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]",
                                        bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]")
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                  image_size=16, patch_size=8),
        GPT2Config(vocab_size=len(words), n_positions=16, n_embd=16, n_layer=1, n_head=2,
                   bos_token_id=1, eos_token_id=2, pad_token_id=0))
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config)
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 1, 0, 2
    model.generation_config.bos_token_id = 1     # generated words only, no prompt
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_captioner_captions_every_image_in_batches(tmp_path, cache, weights):
    from search.anchors.captioning import Captioner
    spec = write_spec(tmp_path / "data", per_class=3)             # 9 training images
    folder = tiny_captioner(tmp_path / "captioner")
    captioner = Captioner.load(str(folder), "cpu", max_new_tokens=5)
    train = sorted(str(p.resolve()) for p in (tmp_path / "data/img/train").glob("*.png"))
    texts = captioner.caption(train, batch_size=4, progress=False)
    assert len(texts) == 9 and captioner.batches == 3             # ceil(9 / 4) generate calls
    assert all(isinstance(t, str) and len(t.split()) <= 5 for t in texts)

    settings = A.AnchorSettings(model=MODEL, pretrained=str(weights[0]), captioner=str(folder),
                                caption_batch_size=4, max_new_tokens=5, progress=False)
    derived = A.prepare_anchors(spec, settings)
    table = read_pairs(load_spec(derived).anchors["captions"], derived.parent)
    assert sorted(p for p, _ in table) == train
    assert [c for _, c in sorted(table)] == texts                  # same model, same captions
    A.prepare_anchors(spec, settings)
    assert A.COUNTS["caption"] == 1 and A.COUNTS["hit"] == 1


# --- CLI ---------------------------------------------------------------------------------------
def test_cli_prints_the_derived_spec(tmp_path, cache, weights, capsys):
    spec = write_spec(tmp_path / "data")
    assert prepare.main(["anchors", "--data", str(spec), "--model", MODEL, "--pretrained",
                         str(weights[0]), "--index", "hnsw", "--k", "2", "--workers", "0",
                         "--quiet", "--cache", str(tmp_path / "c")]) == 0
    out, err = capsys.readouterr()
    derived = Path(out.strip())
    assert derived.is_file() and derived.parent.parent == tmp_path / "c"
    assert "recall@2" in err and load_spec(derived).anchors["retrieved"]


@pytest.mark.parametrize("change, message", [
    ({"--data": "missing.yaml"}, "does not exist"),
    ({"--index": "annoy"}, "unknown index type"),
    ({"--candidates": "nothing-*.tar"}, "no candidate shards"),
    ({"--candidates": "nope.csv"}, "does not exist"),
    ({"--captioner": "no/such/captioner"}, "not found"),
    ({"--k": "0"}, "--k must be"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, cache, weights, capsys, change, message):
    spec = write_spec(tmp_path / "data", per_class=1, candidates=3)
    args = {"--data": str(spec), "--model": MODEL, "--pretrained": str(weights[0]), **change}
    with pytest.raises(SystemExit) as exc:
        prepare.main(["anchors", "--quiet", *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error:") and "\n" not in err
    assert message in err
    assert not A.COUNTS                                          # nothing was computed


def test_cli_spec_without_candidates_or_captions(tmp_path, cache, weights, capsys):
    spec = write_spec(tmp_path / "data", per_class=1, candidates=3)
    raw = yaml.safe_load(spec.read_text())
    del raw["anchors"]
    spec.write_text(yaml.safe_dump(raw))
    pool = str(spec.parent / "pool" / "candidates.csv")
    for extra, message in (([], "no candidate set"), (["--candidates", pool], "no captions")):
        with pytest.raises(SystemExit):
            prepare.main(["anchors", "--data", str(spec), "--model", MODEL, "--pretrained",
                          str(weights[0]), *extra])
        assert message in capsys.readouterr().err
