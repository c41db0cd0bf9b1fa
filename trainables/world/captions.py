"""Captions for the embedded world: randomised templates over an image's metadata.

:func:`caption` writes a web-like caption that drops attributes at random ("a pencil sketch of a
small red star on a striped background", "hourglass", "star, sketch, dotted background");
pretraining re-samples one every step. :func:`noisy_caption` stands in for an offline image
captioner (ARF uses BLIP-2): sentence-like captions that sometimes get an attribute wrong
(colour, size, background; rarely the class).

Prompt templates used to build zero-shot heads live here too. The ID templates use no style word
other than "photo" (the ID style): pairing photo images with "a sketch of a ..." during
fine-tuning (FLYP) destroyed style recognition in the feasibility run (docs/world.md).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .render import BACKGROUNDS, COLOURS, SHAPES, SIZES

#: Words a caption may use for each style (several per style, as on the web).
STYLE_WORDS: dict[str, list[str]] = {
    "photo": ["photo", "photograph", "snapshot", "close-up photo"],
    "sketch": ["sketch", "pencil sketch", "line drawing", "doodle"],
    "cartoon": ["cartoon", "clipart", "cartoon drawing", "comic illustration"],
    "painting": ["painting", "oil painting", "watercolor", "acrylic painting"],
}
SIZE_WORDS: dict[str, list[str]] = {"small": ["small", "little", "tiny"],
                                    "large": ["large", "big", "huge"]}

#: Prompt templates for class recognition (ID and held-out classes): style-neutral, or "photo".
CLASS_TEMPLATES: list[str] = [
    "a photo of a {}.", "a {}.", "a {} shape.", "an image of a {}.", "a picture of the {}.",
    "a photo of the {} shape.", "a {} on a background.",
]
#: CAR-FT context prompts: "a {domain} of a {class}." (the paper's form for domain datasets).
CONTEXT_TEMPLATES: list[str] = ["a photo of a {}.", "a sketch of a {}.", "a cartoon of a {}.",
                                "a painting of a {}."]
#: Prompt templates for the style-recognition task (classes = style names).
STYLE_TEMPLATES: list[str] = ["a {} of a shape.", "a {}.", "a {} of an object.",
                              "a {} of something.", "an image in the style of a {}."]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def caption(meta: dict[str, Any], rng: np.random.Generator, p_class: float = 0.92,
            p_attr: float = 0.5) -> str:
    """A random caption of one image; each attribute is kept with probability ``p_attr``.

    The class name is kept with probability ``p_class`` (else "shape"). Three forms: a sentence
    ("a pencil sketch of a small red star on a striped background"), a tag list
    ("star, sketch, dotted background") and a bare noun phrase ("red star", "hourglass").
    """
    keep = rng.random(4) < p_attr  # style, size, colour, background
    noun = meta["label"] if rng.random() < p_class else "shape"
    style = _pick(rng, STYLE_WORDS[meta["style"]])
    size = _pick(rng, SIZE_WORDS[meta["size"]])
    background = f"{meta['background']} background"
    form = rng.random()
    if form < 0.55:  # sentence
        words = [w for w, k in ((size, keep[1]), (meta["colour"], keep[2])) if k] + [noun]
        phrase = " ".join(words)
        text = f"{_article(phrase)} {phrase}"
        if keep[0]:
            text = f"{_article(style)} {style} of {text}"
        if keep[3]:
            text += f" on {_article(background)} {background}"
        return text
    if form < 0.8:  # tag list, shuffled attributes after the noun
        tags = [t for t, k in ((style, keep[0]), (size, keep[1]), (meta["colour"], keep[2]),
                               (background, keep[3])) if k]
        tags = [tags[i] for i in rng.permutation(len(tags))]
        return ", ".join([noun, *tags])
    words = [meta["colour"]] if keep[2] else []  # bare noun phrase
    return " ".join([*words, noun])


def _wrong(rng: np.random.Generator, options: list[str], right: str) -> str:
    others = [o for o in options if o != right]
    return others[int(rng.integers(len(others)))]


def noisy_caption(meta: dict[str, Any], rng: np.random.Generator, noise: float = 0.15) -> str:
    """A captioner-like sentence about one image, with attribute errors.

    Colour, size and background are each replaced by a wrong value with probability ``noise``,
    the class with probability ``noise / 5`` (another class), and the style word is dropped half
    of the time. The sentence keeps most attributes (``p_attr`` 0.8), like a BLIP-2 caption.
    """
    m = dict(meta)
    for key, options in (("colour", list(COLOURS)), ("size", SIZES), ("background", BACKGROUNDS)):
        if rng.random() < noise:
            m[key] = _wrong(rng, options, m[key])
    if rng.random() < noise / 5:
        m["label"] = _wrong(rng, SHAPES, m["label"])
    style = _pick(rng, STYLE_WORDS[m["style"]]) if rng.random() < 0.5 else None
    adjectives = [w for w, p in ((_pick(rng, SIZE_WORDS[m["size"]]), 0.6), (m["colour"], 0.9))
                  if rng.random() < p]
    phrase = " ".join([*adjectives, m["label"]])
    text = f"{_article(phrase)} {phrase}"
    if style:
        text = f"{_article(style)} {style} of {text}"
    if rng.random() < 0.7:
        text += f" on {_article(m['background'])} {m['background']} background"
    return text
