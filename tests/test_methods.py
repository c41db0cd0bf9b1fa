"""Every registered method, every stage: the Method contract on the micro CLIP.

Registering a method is what tests it: the cases below are built from ``METHODS``.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from trainables.config import TrainConfig, split_config
from trainables.methods import (
    METHODS,
    Batch,
    get_method_class,
    is_head,
    is_image_tower,
    is_logit_scale,
    is_text_tower,
)
from trainables.models import MAX_LOGIT_SCALE, ClipClassifier
from trainables.wise import interpolate

ALL = sorted(METHODS)
TRAINING = [n for n in ALL if not METHODS[n].trains_nothing]
# non-default variants that change the loss's code path
VARIANTS = {"car-ft": [{"ctx_variant": "gt"}], "flyp": [{"mask_same_class": True}],
            "arf": [{"mask_same_class": True}]}


def make_method(name: str, **params):
    cls = get_method_class(name)
    train, method_params = split_config(params, cls.Params)
    return cls(method_params, train)


def _stage_cases():
    cases = []
    for name in TRAINING:
        for params in [{}] + VARIANTS.get(name, []):
            for i, stage in enumerate(make_method(name, **params).stages()):
                tag = "-".join([name, stage.name] + [f"{k}={v}" for k, v in params.items()])
                cases.append(pytest.param(name, params, i, id=tag))
    return cases


STAGE_CASES = _stage_cases()


def make_batch(model: ClipClassifier, method, stage, task, tokenizer) -> Batch:
    """A batch as the loop builds it: cached features for feature-caching stages, images
    otherwise, plus every anchor set the method declares (A = 4 random pairs each)."""
    if stage.cache_features:
        with torch.no_grad():
            return Batch(labels=task.labels, features=model.image_features(task.images))
    gen = torch.Generator().manual_seed(2)
    anchors = {key: (torch.randn(4, 3, 16, 16, generator=gen),
                     tokenizer([f"{key} text number {i}" for i in range(4)]))
               for key in method.anchor_sets}
    return Batch(labels=task.labels, images=task.images, anchors=anchors)


def run_loss(name, params, stage_idx, model, make_context, tiny_task, tokenizer):
    method = make_method(name, **params)
    ctx = make_context(model, reference=True)
    method.setup(model, ctx)
    stage = method.stages()[stage_idx]
    model.train()
    batch = make_batch(model, method, stage, tiny_task, tokenizer)
    return method, stage, ctx, batch


def nonzero_grad(p: torch.nn.Parameter) -> bool:
    return p.grad is not None and bool(p.grad.abs().sum() > 0)


@pytest.mark.parametrize("name,params,stage_idx", STAGE_CASES)
def test_loss_finite_and_grads_on_trained_params_only(name, params, stage_idx, micro_classifier,
                                                      make_context, tiny_task, micro_bundle):
    """The loop's view: requires_grad from the stage predicate, then backward of the sum."""
    model = micro_classifier
    method, stage, ctx, batch = run_loss(name, params, stage_idx, model, make_context, tiny_task,
                                         micro_bundle.tokenizer)
    for n, p in model.named_parameters():
        p.requires_grad_(stage.trains(n))
    terms = method.loss(model, batch, ctx)
    assert terms and all(k.endswith("_loss") for k in terms), sorted(terms)
    for key, value in terms.items():
        assert value.dim() == 0 and torch.isfinite(value), (key, value)
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    trained = [n for n, _ in model.named_parameters() if stage.trains(n)]
    assert trained, "a training stage must train something"
    for n, p in model.named_parameters():
        if stage.trains(n):
            assert nonzero_grad(p), f"{name}/{stage.name}: trained {n} got no gradient"
        else:
            assert p.grad is None, f"{name}/{stage.name}: frozen {n} got a gradient"


@pytest.mark.parametrize("name,params,stage_idx", STAGE_CASES)
def test_loss_depends_on_exactly_the_trained_params(name, params, stage_idx, micro_classifier,
                                                    make_context, tiny_task, micro_bundle):
    """With every parameter requiring grad, exactly the declared ones receive a gradient: the
    declaration and the loss agree (nothing trained is unused, nothing used is left frozen)."""
    model = micro_classifier
    method, stage, ctx, batch = run_loss(name, params, stage_idx, model, make_context, tiny_task,
                                         micro_bundle.tokenizer)
    model.requires_grad_(True)
    sum(method.loss(model, batch, ctx).values()).backward()
    used = {n for n, p in model.named_parameters() if nonzero_grad(p)}
    declared = {n for n, _ in model.named_parameters() if stage.trains(n)}
    assert used == declared, (f"used but not trained: {sorted(used - declared)[:5]}; "
                              f"trained but unused: {sorted(declared - used)[:5]}")


@pytest.mark.parametrize("name,params,stage_idx", STAGE_CASES)
def test_optimizer_step_leaves_reference_and_frozen_params(name, params, stage_idx,
                                                           micro_classifier, make_context,
                                                           tiny_task, micro_bundle):
    model = micro_classifier
    method, stage, ctx, batch = run_loss(name, params, stage_idx, model, make_context, tiny_task,
                                         micro_bundle.tokenizer)
    ref_before = {k: v.clone() for k, v in ctx.reference.state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for n, p in model.named_parameters():
        p.requires_grad_(stage.trains(n))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sum(method.loss(model, batch, ctx).values()).backward()
    opt.step()
    method.after_step(model)
    for k, v in ctx.reference.state_dict().items():
        assert torch.equal(v, ref_before[k]), f"reference changed: {k}"
    trained = set(method.trained_names(model))
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed, "an optimizer step changed nothing"
    assert changed <= {n for n in trained if stage.trains(n)}, sorted(changed - trained)[:5]


# --- declarations ---------------------------------------------------------------------------
def group(name: str) -> str:
    if is_image_tower(name):
        return "image"
    if is_text_tower(name):
        return "text"
    if is_logit_scale(name):
        return "logit_scale"
    assert is_head(name), f"parameter {name} is in no group"
    return name


HEAD = {"head.weight", "head.bias"}
# What each method trains, from the table in docs/methods.md#the-methods.
EXPECTED_GROUPS = {
    "zeroshot": set(),
    "lp": HEAD,
    "ft": {"image"} | HEAD,
    "lp-ft": {"image"} | HEAD,
    "l2-sp": {"image"} | HEAD,
    "flyp": {"image", "text", "logit_scale"},
    "car-ft": {"image"} | HEAD,
    "clip-cite": {"image", "text", "head.weight"},  # cosine classifier: no bias
    "arf": {"image", "text", "logit_scale"},
    "ce-swa": {"image", "text", "logit_scale"},
}


@pytest.mark.parametrize("name", ALL)
def test_trained_names_are_the_wise_keys(name, micro_classifier):
    assert name in EXPECTED_GROUPS, f"add {name!r}'s trained groups (docs/methods.md) to this test"
    method = make_method(name)
    names = method.trained_names(micro_classifier)
    expected = [n for n, _ in micro_classifier.named_parameters()
                if group(n) in EXPECTED_GROUPS[name]]
    assert names == expected
    # they are state-dict keys that WiSE accepts
    state = micro_classifier.state_dict()
    assert set(names) <= set(state)
    out = interpolate(state, state, 0.5, keys=names)
    assert all(torch.equal(out[k], state[k]) for k in state)


@pytest.mark.parametrize("name", ALL)
def test_registry_entry(name):
    cls = METHODS[name]
    assert cls.name == name
    assert cls.__doc__ and "loss" in cls.__doc__.lower(), "docstring must state the loss"
    assert dataclasses.is_dataclass(cls.Params) and cls.Params.__dataclass_params__.frozen
    params = cls.Params()
    for f in dataclasses.fields(params):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(params, f.name, getattr(params, f.name))


@pytest.mark.parametrize("name", ALL)
def test_paper_defaults_are_valid_settings(name):
    """Each class's paper defaults are TrainConfig / Params keys the method accepts, and its
    paper learning rates are among them."""
    cls = METHODS[name]
    split_config(dict(cls.paper_defaults), cls.Params)
    assert set(cls.paper_lrs) <= set(cls.paper_defaults) or not cls.paper_defaults


def test_report_defaults_are_the_papers_scaled_once():
    """The methods report's settings (docs/methods.md): the paper lrs times LR_SCALE, the rest
    as the class gives them, over the common settings."""
    from search.bench.report import COMMON, LR_SCALE, defaults
    assert defaults("zeroshot") == COMMON
    assert defaults("ft") == {**COMMON, "lr": 3e-5 * LR_SCALE}
    assert defaults("lp") == {**COMMON, "lr": 1e-2, "weight_decay": 0.0}
    assert defaults("lp-ft") == {**COMMON, "lr": 3e-5 * LR_SCALE, "lp_epochs": 1, "lp_lr": 1e-2}
    assert defaults("clip-cite") == {**COMMON, "lr": 5e-6 * LR_SCALE, "lambda_scl": 0.7,
                                     "eta_vld": 0.1}
    assert defaults("ce-swa") == {**COMMON, "lr": 1e-5 * LR_SCALE, "weight_decay": 0.0,
                                  "swa_lr": 1e-4 * LR_SCALE, "swa_epochs": 1}


def test_unknown_method_lists_choices():
    with pytest.raises(ValueError, match="car-ft"):
        get_method_class("car_ft")


def test_zeroshot_trains_nothing(micro_classifier, make_context, tiny_task):
    method = make_method("zeroshot")
    assert method.trains_nothing and method.trained_names(micro_classifier) == []
    with pytest.raises(RuntimeError):
        method.loss(micro_classifier, Batch(labels=tiny_task.labels, images=tiny_task.images),
                    make_context(micro_classifier))


def test_lp_ft_stages():
    method = make_method("lp-ft", lp_epochs=2, lp_lr=1e-2)
    lp, ft = method.stages()
    assert (lp.name, lp.cache_features, lp.epochs, lp.lr) == ("lp", True, 2, 1e-2)
    assert (ft.name, ft.cache_features, ft.epochs, ft.lr) == ("ft", False, None, None)
    assert make_method("lp").stages()[0].cache_features


@pytest.mark.parametrize("name", ALL)
def test_id_logits_at_init_are_zero_shot(name, micro_classifier, tiny_task):
    """At θ_zs every method classifies like zero-shot CLIP: s · f W_clsᵀ."""
    model = micro_classifier.eval()
    with torch.no_grad():
        feats = model.image_features(tiny_task.images)
        scale = model.clip.logit_scale.exp()
        w_cls = model.head.weight / scale  # the builder stored s·W_cls
        logits = make_method(name).id_logits(model, feats, w_cls)
    torch.testing.assert_close(logits, scale * feats @ w_cls.T)


@pytest.mark.parametrize("name", [n for n in TRAINING
                                  if any(make_method(n).trains(p) for p in ["clip.logit_scale"])])
def test_trained_logit_scale_is_clamped(name, micro_classifier):
    with torch.no_grad():
        micro_classifier.clip.logit_scale.fill_(10.0)
    make_method(name).after_step(micro_classifier)
    assert micro_classifier.clip.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)


def test_flyp_draws_one_template_per_image(micro_classifier, make_context, tiny_task):
    method = make_method("flyp", seed=3)
    method.setup(micro_classifier, make_context(micro_classifier, reference=False))
    labels = torch.arange(4).repeat(50)  # (200,)
    tokens = method.prompt_tokens(Batch(labels=labels))  # (200, L)
    all_tokens = method._tokens  # (K, T, L)
    drawn = set()
    for label, tok in zip(labels.tolist(), tokens):
        matches = [t for t in range(all_tokens.shape[1]) if torch.equal(all_tokens[label, t], tok)]
        assert len(matches) == 1, "each image's prompt is one of its own class's templates"
        drawn.add(matches[0])
    assert drawn == set(range(len(tiny_task.templates)))
    again = make_method("flyp", seed=3)
    again.setup(micro_classifier, make_context(micro_classifier, reference=False))
    assert torch.equal(again.prompt_tokens(Batch(labels=labels)), tokens), \
        "draws follow TrainConfig.seed"


def test_arf_without_anchor_set_fails_clearly(micro_classifier, make_context, tiny_task,
                                              micro_bundle):
    method = make_method("arf")
    ctx = make_context(micro_classifier, reference=False)
    method.setup(micro_classifier, ctx)
    tokens = micro_bundle.tokenizer(["a caption"] * 8)
    batch = Batch(labels=tiny_task.labels, images=tiny_task.images,
                  anchors={"captions": (tiny_task.images, tokens)})
    with pytest.raises(KeyError, match="retrieved"):
        method.loss(micro_classifier, batch, ctx)


def test_params_reject_bad_values():
    from trainables.config import ConfigError
    for name, bad in [("car-ft", {"ctx_variant": "some"}), ("car-ft", {"car_alpha": -1}),
                      ("ce-swa", {"swa_epochs": 0}), ("l2-sp", {"beta": -1.0}),
                      ("clip-cite", {"eta_vld": -0.1}), ("arf", {"w_cap": -1}),
                      ("lp-ft", {"lp_epochs": 0})]:
        with pytest.raises(ConfigError):
            make_method(name, **bad)
    assert TrainConfig().label_smoothing == 0.0
