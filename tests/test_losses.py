"""Loss values against hand-computed ones on fixed small tensors (explicit Python arithmetic, not
the functions under test), and the methods' wiring of those losses on the micro CLIP."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip import ClipLoss

from trainables.config import TrainConfig
from trainables.heads import build_classifier, context_weights, zero_shot_weights
from trainables.methods import Batch, Stage, get_method_class
from trainables.methods.car_ft import context_kl
from trainables.methods.clip_cite import dva_loss, scl_loss, vld_loss
from trainables.methods.common import (
    CLASS_PROMPT,
    contrastive_loss,
    same_class_masked_contrastive_loss,
)
from trainables.methods.l2_sp import l2sp_penalty


def make_method(name: str, train: TrainConfig | None = None, **params):
    cls = get_method_class(name)
    return cls(cls.Params(**params), train or TrainConfig())


# Three unit-norm image and text features in R^3, and a temperature.
IMG = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [0.1, 1.0, 0.3], [0.0, 0.4, 1.0]]), dim=-1)
TXT = F.normalize(torch.tensor([[0.9, 0.0, 0.3], [0.3, 0.8, 0.0], [0.2, 0.1, 1.0]]), dim=-1)
SCALE = 2.5


def dot(a, b) -> float:
    return sum(x * y for x, y in zip(a.tolist(), b.tolist()))


def hand_contrastive(img, txt, scale, allowed=lambda i, j: True) -> float:
    """½[mean_i −log softmax_row(i)[i] + mean_j −log softmax_col(j)[j]], with only the pairs
    ``allowed(i, j)`` in each denominator."""
    n = len(img)
    logit = [[scale * dot(img[i], txt[j]) for j in range(n)] for i in range(n)]
    rows = [-(logit[i][i] - math.log(sum(math.exp(logit[i][j]) for j in range(n)
                                         if allowed(i, j)))) for i in range(n)]
    cols = [-(logit[j][j] - math.log(sum(math.exp(logit[i][j]) for i in range(n)
                                         if allowed(j, i)))) for j in range(n)]
    return 0.5 * (sum(rows) / n + sum(cols) / n)


def test_contrastive_loss_by_hand_and_cliploss():
    expected = hand_contrastive(IMG, TXT, SCALE)
    assert float(contrastive_loss(IMG, TXT, SCALE)) == pytest.approx(expected, rel=1e-6)
    assert float(ClipLoss()(IMG, TXT, SCALE)) == pytest.approx(expected, rel=1e-6)


def test_masked_contrastive_leaves_out_other_same_class_pairs():
    labels = torch.tensor([0, 0, 1])
    allowed = lambda i, j: i == j or labels[i] != labels[j]  # noqa: E731
    expected = hand_contrastive(IMG, TXT, SCALE, allowed)
    got = same_class_masked_contrastive_loss(IMG, TXT, labels, SCALE)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(got) != pytest.approx(hand_contrastive(IMG, TXT, SCALE), rel=1e-3)


def test_scl_equals_flyp_loss_when_classes_distinct():
    labels = torch.tensor([2, 0, 1])
    assert float(scl_loss(IMG, TXT, labels, SCALE)) == pytest.approx(
        float(ClipLoss()(IMG, TXT, SCALE)), rel=1e-6)
    same = torch.tensor([1, 1, 0])
    allowed = lambda i, j: i == j or same[i] != same[j]  # noqa: E731
    assert float(scl_loss(IMG, TXT, same, SCALE)) == pytest.approx(
        hand_contrastive(IMG, TXT, SCALE, allowed), rel=1e-6)


def test_dva_loss_is_ce_over_scaled_cosine():
    feats = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]])
    weight = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 0.5], [1.0, 1.0, 1.0]])  # unnormalised
    labels = [2, 1]
    expected = 0
    for f, y in zip(feats, labels):
        cos = [dot(f, w) / math.sqrt(dot(f, f) * dot(w, w)) for w in weight]
        expected += -(SCALE * cos[y] - math.log(sum(math.exp(SCALE * c) for c in cos)))
    got = dva_loss(feats, weight, torch.tensor(labels), SCALE)
    assert float(got) == pytest.approx(expected / 2, rel=1e-6)


def hand_kl(ref_logits, logits) -> float:
    """mean over rows of Σ_j p_ref log(p_ref / p), p = softmax of the row."""
    total = 0.0
    for r, q in zip(ref_logits, logits):
        zr, zq = sum(math.exp(v) for v in r), sum(math.exp(v) for v in q)
        total += sum(math.exp(a) / zr * ((a - math.log(zr)) - (b - math.log(zq)))
                     for a, b in zip(r, q))
    return total / len(ref_logits)


def test_vld_loss_teacher_first():
    zs_s, ft_s = 2.0, 3.0
    ft_img = F.normalize(IMG + 0.3, dim=-1)
    ft_txt = F.normalize(TXT - 0.2, dim=-1)
    ref = [[zs_s * dot(IMG[i], TXT[j]) for j in range(3)] for i in range(3)]
    cur = [[ft_s * dot(ft_img[i], ft_txt[j]) for j in range(3)] for i in range(3)]
    got = vld_loss(IMG, TXT, zs_s, ft_img, ft_txt, ft_s)
    assert float(got) == pytest.approx(hand_kl(ref, cur), rel=1e-5)
    assert float(got) != pytest.approx(hand_kl(cur, ref), rel=1e-3)  # not the reverse KL


def test_context_kl_by_hand():
    w_ctx = TXT  # (P=3, D=3)
    ref, cur = IMG[:2], F.normalize(IMG[1:] + 0.5, dim=-1)  # (B=2, D)
    logits = lambda f: [[SCALE * dot(x, w) for w in w_ctx] for x in f]  # noqa: E731
    got = context_kl(ref, cur, w_ctx, SCALE)
    assert float(got) == pytest.approx(hand_kl(logits(ref), logits(cur)), rel=1e-5)
    # "gt" variant: per-image W_ctx (B, P, D)
    per_image = torch.stack([TXT, IMG])
    want = hand_kl([[SCALE * dot(ref[b], w) for w in per_image[b]] for b in range(2)],
                   [[SCALE * dot(cur[b], w) for w in per_image[b]] for b in range(2)])
    assert float(context_kl(ref, cur, per_image, SCALE)) == pytest.approx(want, rel=1e-5)


def test_l2sp_penalty_by_hand():
    pairs = [(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])),
             (torch.tensor([[3.0]]), torch.tensor([[1.0]]))]
    assert float(l2sp_penalty(pairs, 0.1)) == pytest.approx(0.1 * (1 + 4 + 4))


# --- heads --------------------------------------------------------------------------------
def encode(model_clip, tokenizer, text: str) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(model_clip.encode_text(tokenizer([text]))[0], dim=-1)


def test_zero_shot_weights_and_classifier(micro_bundle, tiny_task):
    clip, tok = micro_bundle.clip, micro_bundle.tokenizer
    w = zero_shot_weights(clip, tok, tiny_task.classnames, tiny_task.templates, "cpu")
    assert w.shape == (4, 32)
    for k, c in enumerate(tiny_task.classnames):
        mean = torch.stack([encode(clip, tok, t.format(c)) for t in tiny_task.templates]).mean(0)
        torch.testing.assert_close(w[k], mean / mean.norm())
    model = build_classifier(clip, tok, tiny_task.classnames, tiny_task.templates, "cpu")
    s = clip.logit_scale.exp().detach()
    torch.testing.assert_close(model.head.weight.detach(), s * w)
    assert torch.equal(model.head.bias.detach(), torch.zeros(4))
    with torch.no_grad():
        feats = model.image_features(tiny_task.images)
        torch.testing.assert_close(model(tiny_task.images), s * feats @ w.T)


def test_context_weights_average_over_classes_per_template(micro_bundle, tiny_task):
    clip, tok = micro_bundle.clip, micro_bundle.tokenizer
    w_ctx = context_weights(clip, tok, tiny_task.classnames, tiny_task.context_templates, "cpu")
    assert w_ctx.shape == (3, 32)
    per_class = context_weights(clip, tok, tiny_task.classnames, tiny_task.context_templates,
                                "cpu", variant="gt")
    assert per_class.shape == (4, 3, 32)
    for p, template in enumerate(tiny_task.context_templates):
        embs = [encode(clip, tok, template.format(c)) for c in tiny_task.classnames]
        mean = torch.stack(embs).mean(0)
        torch.testing.assert_close(w_ctx[p], mean / mean.norm())
        for k in range(4):
            torch.testing.assert_close(per_class[k, p], embs[k])


# --- the methods' wiring ------------------------------------------------------------------
def perturb(module: torch.nn.Module, predicate, seed: int = 0, size: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if predicate(n):
                p.add_(size * torch.randn(p.shape, generator=gen))


def single_template_context(make_context, model, tiny_task, reference=True):
    ctx = make_context(model, reference=reference)
    ctx.templates = [tiny_task.templates[0]]  # FLYP's draw is then deterministic
    return ctx


def test_flyp_loss_is_cliploss_on_class_prompts(micro_classifier, make_context, tiny_task,
                                                micro_bundle):
    model, tok = micro_classifier, micro_bundle.tokenizer
    ctx = single_template_context(make_context, model, tiny_task, reference=False)
    method = make_method("flyp")
    method.setup(model, ctx)
    batch = Batch(labels=tiny_task.labels, images=tiny_task.images)
    got = method.loss(model, batch, ctx)
    prompts = tok([ctx.templates[0].format(tiny_task.classnames[y]) for y in tiny_task.labels])
    want = ClipLoss()(model.image_features(tiny_task.images), model.text_features(prompts),
                      model.clip.logit_scale.exp())
    assert set(got) == {"contrastive_loss"}
    torch.testing.assert_close(got["contrastive_loss"], want)


def test_arf_terms_and_weights(micro_classifier, make_context, tiny_task, micro_bundle):
    model, tok = micro_classifier, micro_bundle.tokenizer
    ctx = single_template_context(make_context, model, tiny_task, reference=False)
    method = make_method("arf", w_cap=0.5, w_ret=2.0)
    method.setup(model, ctx)
    cap_tokens = tok([f"a blurry picture with a {tiny_task.classnames[y]}"
                      for y in tiny_task.labels])
    ret_images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    ret_tokens = tok(["a web photo", "some text", "a tree in a field", "red car on a road"])
    batch = Batch(labels=tiny_task.labels, images=tiny_task.images,
                  anchors={"captions": (tiny_task.images, cap_tokens),
                           "retrieved": (ret_images, ret_tokens)})
    got = method.loss(model, batch, ctx)
    s = model.clip.logit_scale.exp()
    feats = model.image_features(tiny_task.images)
    prompts = tok([ctx.templates[0].format(tiny_task.classnames[y]) for y in tiny_task.labels])
    clip_loss = ClipLoss()
    torch.testing.assert_close(got["cl_loss"], clip_loss(feats, model.text_features(prompts), s))
    torch.testing.assert_close(got["cap_loss"],
                               0.5 * clip_loss(feats, model.text_features(cap_tokens), s))
    torch.testing.assert_close(got["ret_loss"], 2.0 * clip_loss(
        model.image_features(ret_images), model.text_features(ret_tokens), s))


def test_car_ft_terms(micro_classifier, make_context, tiny_task):
    model = micro_classifier
    ctx = make_context(model)
    method = make_method("car-ft", car_alpha=0.5)
    method.setup(model, ctx)
    batch = Batch(labels=tiny_task.labels, images=tiny_task.images)
    at_init = method.loss(model, batch, ctx)
    assert at_init["ctx_kl_loss"].item() == pytest.approx(0.0, abs=1e-6)  # θ = θ_zs
    perturb(model, lambda n: n.startswith("clip.visual."))
    got = method.loss(model, batch, ctx)
    feats = model.image_features(batch.images)
    ref_feats = ctx.reference.image_features(batch.images)
    w_ctx = context_weights(ctx.reference.clip, ctx.tokenizer, ctx.classnames,
                            ctx.context_templates, "cpu")
    torch.testing.assert_close(got["ctx_kl_loss"],
                               0.5 * context_kl(ref_feats, feats, w_ctx, ctx.zs_logit_scale))
    torch.testing.assert_close(got["ce_loss"], F.cross_entropy(model(batch.images), batch.labels))
    assert got["ctx_kl_loss"].item() > 0


def test_clip_cite_terms(micro_classifier, make_context, tiny_task, micro_bundle):
    model, tok = micro_classifier, micro_bundle.tokenizer
    ctx = make_context(model)
    method = make_method("clip-cite", lambda_scl=0.7, eta_vld=0.1)
    method.setup(model, ctx)
    batch = Batch(labels=tiny_task.labels, images=tiny_task.images)
    at_init = method.loss(model, batch, ctx)
    assert at_init["vld_loss"].item() == pytest.approx(0.0, abs=1e-6)  # θ = θ_zs
    perturb(model, lambda n: n.startswith(("clip.visual.", "clip.transformer.")))
    got = method.loss(model, batch, ctx)
    s = model.clip.logit_scale.exp()
    feats = model.image_features(batch.images)
    text = model.text_features(tok([CLASS_PROMPT.format(tiny_task.classnames[y])
                                    for y in tiny_task.labels]))
    with torch.no_grad():
        zs_feats = ctx.reference.image_features(batch.images)
        zs_text = ctx.reference.text_features(tok([CLASS_PROMPT.format(tiny_task.classnames[y])
                                                   for y in tiny_task.labels]))
    torch.testing.assert_close(got["dva_loss"], dva_loss(feats, model.head.weight, batch.labels, s))
    torch.testing.assert_close(got["scl_loss"], 0.7 * scl_loss(feats, text, batch.labels, s))
    torch.testing.assert_close(got["vld_loss"],
                               0.1 * vld_loss(zs_feats, zs_text, ctx.zs_logit_scale,
                                              feats, text, s))
    assert got["vld_loss"].item() > 0


def test_l2sp_term(micro_classifier, make_context, tiny_task):
    model = micro_classifier
    method = make_method("l2-sp", beta=0.3)
    method.setup(model, make_context(model, reference=True))
    batch = Batch(labels=tiny_task.labels, images=tiny_task.images)
    assert method.loss(model, batch, None)["l2sp_loss"].item() == 0.0
    delta, n_image = 0.01, 0
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith("clip.visual.") or n.startswith("head."):
                p.add_(delta)
            n_image += p.numel() if n.startswith("clip.visual.") else 0
    got = method.loss(model, batch, None)["l2sp_loss"]
    assert got.item() == pytest.approx(0.3 * delta ** 2 * n_image, rel=1e-3)  # head excluded


# --- SWA ----------------------------------------------------------------------------------
def test_swa_average_is_mean_of_last_epoch_snapshots(micro_classifier):
    model = micro_classifier
    method = make_method("ce-swa", TrainConfig(epochs=5), swa_epochs=3)
    stage = method.stages()[0]
    gen = torch.Generator().manual_seed(0)
    snapshots = []
    for epoch in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
        method.on_epoch_end(model, epoch, stage)
    final = method.final_state_dict(model)
    assert list(final) == list(model.state_dict())
    for n, _ in model.named_parameters():
        mean = torch.stack([s[n] for s in snapshots[2:]]).mean(0)  # epochs 2, 3, 4
        torch.testing.assert_close(final[n], mean)
    for n, b in model.named_buffers():
        if n in final:  # persistent buffers come from the live model
            assert torch.equal(final[n], b)


def test_swa_over_all_epochs_when_run_is_shorter(micro_classifier):
    model = micro_classifier
    method = make_method("ce-swa", TrainConfig(epochs=2), swa_epochs=10)
    stage = Stage("train", method.trains)
    before = model.head.weight.detach().clone()
    method.on_epoch_end(model, 0, stage)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    method.on_epoch_end(model, 1, stage)
    torch.testing.assert_close(method.final_state_dict(model)["head.weight"], before + 0.5)


def test_swa_schedule_switches_to_swalr():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    default = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - 0.05 * step)
    method = make_method("ce-swa", TrainConfig(epochs=4), swa_epochs=2, swa_lr=0.01)
    sched = method.lr_scheduler(opt, method.stages()[0], steps_per_epoch=5, default=default)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # steps 0-9 follow the default schedule, SWA starts at step 10 (epoch 2 of 0..3)
    assert lrs[:10] == pytest.approx([0.1 * (1 - 0.05 * k) for k in range(10)])
    assert lrs[10] == pytest.approx(lrs[9])  # SWALR anneals from the lr reached so far
    assert all(a >= b for a, b in zip(lrs[10:15], lrs[11:16]))  # cosine annealing down
    assert lrs[15:] == pytest.approx([0.01] * 5)
    assert sched.state_dict()["steps"] == 20 and sched.get_last_lr() == pytest.approx([0.01])
