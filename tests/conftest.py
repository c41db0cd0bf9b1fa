"""Shared fixtures: a micro CLIP (random init, 16 px), a tiny classification task, and a
MethodContext factory. Everything runs on CPU in well under a second per test."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

os.environ["HF_HUB_OFFLINE"] = "1"  # before open_clip is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from trainables.heads import build_classifier  # noqa: E402
from trainables.methods import MethodContext  # noqa: E402
from trainables.models import ClipBundle, ClipClassifier, create_clip  # noqa: E402

MICRO_MODEL = "micro-clip-16"


@pytest.fixture(scope="session")
def _micro_bundle_master() -> ClipBundle:
    torch.manual_seed(0)
    return create_clip(MICRO_MODEL, pretrained=None)


@pytest.fixture
def micro_bundle(_micro_bundle_master: ClipBundle) -> ClipBundle:
    """A fresh, seeded, randomly initialised micro CLIP (a copy: tests may train it)."""
    master = _micro_bundle_master
    return ClipBundle(copy.deepcopy(master.clip), master.preprocess_train,
                      master.preprocess_val, master.tokenizer, master.name, master.pretrained)


@dataclass
class TinyTask:
    """Four classes, three templates, three context templates, one batch of 16 px images."""

    classnames: list[str]
    templates: list[str]
    context_templates: list[str]
    images: torch.Tensor  # (B, 3, 16, 16)
    labels: torch.Tensor  # (B,), every class present, some repeated


@pytest.fixture
def tiny_task() -> TinyTask:
    gen = torch.Generator().manual_seed(1)
    return TinyTask(
        classnames=["cat", "dog", "car", "tree"],
        templates=["a photo of a {}.", "a drawing of a {}.", "itap of a {}."],
        context_templates=["a photo of a {}.", "a sketch of a {}.", "a painting of a {}."],
        images=torch.randn(8, 3, 16, 16, generator=gen),
        labels=torch.tensor([0, 1, 2, 3, 0, 1, 2, 0]),
    )


@pytest.fixture
def micro_classifier(micro_bundle: ClipBundle, tiny_task: TinyTask) -> ClipClassifier:
    """The micro CLIP with its zero-shot head s·W_cls for ``tiny_task``."""
    return build_classifier(micro_bundle.clip, micro_bundle.tokenizer, tiny_task.classnames,
                            tiny_task.templates, "cpu")


def frozen_reference(model: ClipClassifier) -> ClipClassifier:
    """A frozen copy of ``model``: eval mode, requires_grad False (what the driver passes)."""
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


@pytest.fixture
def make_context(micro_bundle: ClipBundle, tiny_task: TinyTask):
    """``make_context(model, reference=True)`` -> MethodContext for ``tiny_task`` on CPU; with
    ``reference`` a frozen copy of ``model`` (taken now, i.e. at θ_zs) is attached."""

    def make(model: ClipClassifier, reference: bool = True) -> MethodContext:
        return MethodContext(
            classnames=tiny_task.classnames, templates=tiny_task.templates,
            context_templates=tiny_task.context_templates, tokenizer=micro_bundle.tokenizer,
            device=torch.device("cpu"),
            zs_logit_scale=float(model.clip.logit_scale.detach().exp()),
            reference=frozen_reference(model) if reference else None)

    return make
