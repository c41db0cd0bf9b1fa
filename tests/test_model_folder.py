"""The model folder (clipmodel/folder.py): every method's head gives the evaluation's logits
bit for bit, plain open_clip loads the weights and preprocessing, and writes are atomic."""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

from clipmodel import folder as model_folder
from trainables.config import TrainConfig
from trainables.heads import build_classifier, zero_shot_weights
from trainables.methods import METHODS, get_method_class

from .conftest import MICRO_MODEL


def _head(method, model, tokenizer, classes, templates) -> dict[str, torch.Tensor]:
    """The tensors search/export.py stores for ``method.head_kind``."""
    if method.head_kind == "text":
        return {"class_embeddings": zero_shot_weights(model.clip, tokenizer, classes, templates,
                                                      "cpu")}
    return {"weight": model.head.weight, "bias": model.head.bias}


def _perturbed(model) -> None:
    """Move every weight off θ_zs (as fine-tuning would), so the heads differ from W_cls."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_head_logits_equal_the_methods_logits(name, micro_bundle, tiny_task):
    """For every registered method, the exported head's rule gives exactly (torch.equal) the
    ID logits the evaluation computes with ``method.id_logits``."""
    cls = get_method_class(name)
    method = cls(cls.Params(), TrainConfig())
    model = build_classifier(micro_bundle.clip, micro_bundle.tokenizer, tiny_task.classnames,
                             tiny_task.templates, "cpu").eval()
    _perturbed(model)
    with torch.no_grad():
        feats = model.image_features(tiny_task.images)
        text = zero_shot_weights(model.clip, micro_bundle.tokenizer, tiny_task.classnames,
                                 tiny_task.templates, "cpu")
        expected = method.id_logits(model, feats, text)
        head = _head(method, model, micro_bundle.tokenizer, tiny_task.classnames,
                     tiny_task.templates)
        got = model_folder.head_logits(method.head_kind, feats, head, model.clip.logit_scale)
    assert method.head_kind in model_folder.HEAD_KINDS
    assert (method.head_kind == "text") == cls.head_from_text
    assert torch.equal(got, expected)


def _write(target: Path, micro_bundle, tiny_task, kind: str = "linear") -> torch.nn.Module:
    model = build_classifier(micro_bundle.clip, micro_bundle.tokenizer, tiny_task.classnames,
                             tiny_task.templates, "cpu").eval()
    _perturbed(model)
    head = {"weight": model.head.weight, "bias": model.head.bias}
    model_folder.write(target, model.clip, MICRO_MODEL, kind, head, tiny_task.classnames,
                       {"alpha": 0.5}, "# card\n", micro_bundle.tokenizer)
    return model


def _png(path: Path, colour: tuple[int, int, int], size: int = 20) -> Path:
    Image.new("RGB", (size, size + 3), colour).save(path)
    return path


def test_folder_round_trip_is_exact(tmp_path, micro_bundle, tiny_task):
    """Written and loaded back (through open_clip's ``local-dir:``), the model gives the same
    preprocessing and the same logits as the model that was written; model.json holds the
    metadata and the folder holds nothing temporary."""
    model = _write(tmp_path / "model", micro_bundle, tiny_task)
    loaded = model_folder.load(tmp_path / "model")
    images = [model_folder.read_image(_png(tmp_path / f"{i}.png", (40 * i, 90, 200 - 30 * i)))
              for i in range(5)]
    batch = torch.stack([micro_bundle.preprocess_val(im) for im in images])
    assert torch.equal(torch.stack([loaded.preprocess(im) for im in images]), batch)
    with torch.no_grad():
        expected = model(batch)
    assert torch.equal(loaded.logits(batch), expected)
    names, probs = loaded.predict(images, batch_size=2)
    assert names == [tiny_task.classnames[i] for i in expected.argmax(-1).tolist()]
    assert torch.allclose(probs, expected.softmax(-1))
    info = json.loads((tmp_path / "model" / "model.json").read_text())
    assert info["classes"] == tiny_task.classnames and info["alpha"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_plain_open_clip_loads_arch_and_weights(tmp_path, micro_bundle, tiny_task):
    """``open_clip.add_model_config(folder)`` + ``create_model_and_transforms(ARCH,
    pretrained=folder/open_clip_model.safetensors)`` loads the exported CLIP weights."""
    model = _write(tmp_path / "model", micro_bundle, tiny_task)
    open_clip.add_model_config(tmp_path / "model")
    clip, _, _ = open_clip.create_model_and_transforms(
        MICRO_MODEL, pretrained=str(tmp_path / "model" / model_folder.WEIGHTS))
    state = clip.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.clip.state_dict().items())


def test_interrupted_write_leaves_no_folder(tmp_path, micro_bundle, tiny_task, monkeypatch):
    """A write that dies after the weights (here: the card raises) leaves neither the target
    nor its temporary folder; an earlier export at the target is kept intact."""
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", lambda self, text: boom() if self.name ==
                        model_folder.CARD else Path.open(self, "w").write(text))
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "model", micro_bundle, tiny_task)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    _write(tmp_path / "model", micro_bundle, tiny_task)
    before = (tmp_path / "model" / model_folder.WEIGHTS).read_bytes()
    monkeypatch.setattr(Path, "write_text", lambda self, text: boom() if self.name ==
                        model_folder.CARD else Path.open(self, "w").write(text))
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "model", micro_bundle, tiny_task)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert (tmp_path / "model" / model_folder.WEIGHTS).read_bytes() == before


def test_refuses_to_replace_a_folder_that_is_not_an_export(tmp_path, micro_bundle, tiny_task):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    with pytest.raises(model_folder.FolderError, match="not a model folder"):
        _write(tmp_path / "model", micro_bundle, tiny_task)
    assert (tmp_path / "model" / "notes.txt").read_text() == "mine"
