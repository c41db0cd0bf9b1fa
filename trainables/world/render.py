"""Drawing the embedded world: 20 shape classes in 4 styles, drawn at 64 px, pooled to 32x32 RGB.

Every image is a pure function of its metadata (class, style, colour, size, background, position,
rotation) and a NumPy generator, so any image can be re-drawn on its own. Shapes are polygons in
unit coordinates (y down, radius about 1); rotation is limited to +-15 degrees because with free
rotation square/diamond and plus/cross would be the same shape.

Styles:
- ``photo``: shaded fill (directional gradient + highlight), drop shadow, lighting gradient,
  sensor noise and a slight blur; muted backgrounds. The in-distribution style.
- ``sketch``: a thin coloured (doubled, pencil-like) outline on white paper, optional hatching.
- ``cartoon``: flat saturated fill, thick black outline, pastel flat backgrounds.
- ``painting``: blotchy low-frequency colour noise, brush streaks and jagged edges.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

CANVAS = 64  # drawing resolution
OUT = 32  # stored resolution (CANVAS average-pooled by 2)

SHAPES: list[str] = [
    "circle", "square", "triangle", "star", "heart", "ring", "arrow", "diamond", "pentagon",
    "hexagon",
    "moon", "cross", "plus", "bar", "trapezoid", "semicircle", "house", "hourglass", "tee",
    "chevron",
]
ID_CLASSES: list[str] = SHAPES[:10]
HELDOUT_CLASSES: list[str] = SHAPES[10:]
STYLES: list[str] = ["photo", "sketch", "cartoon", "painting"]
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.14, 0.14), "green": (0.16, 0.66, 0.22), "blue": (0.16, 0.30, 0.88),
    "yellow": (0.95, 0.83, 0.13), "orange": (0.97, 0.53, 0.10), "purple": (0.55, 0.22, 0.75),
    "pink": (0.96, 0.47, 0.72), "brown": (0.50, 0.31, 0.15),
}
SIZES: list[str] = ["small", "large"]
BACKGROUNDS: list[str] = ["plain", "striped", "dotted", "noisy"]
RADIUS = {"small": (13.0, 16.0), "large": (21.0, 25.0)}  # shape radius range in canvas pixels

_YY, _XX = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32) + 0.5  # pixel centres, (64, 64)
_Y32, _X32 = 2 * np.mgrid[0:OUT, 0:OUT].astype(np.float32) + 1.0  # (32, 32), canvas units


def _regular(n: int, r: float = 1.0, phase: float = -90.0) -> np.ndarray:
    t = np.deg2rad(phase + 360.0 * np.arange(n) / n)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _arc(cx: float, cy: float, r: float, a0: float, a1: float, n: int = 40) -> np.ndarray:
    t = np.deg2rad(np.linspace(a0, a1, n))
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], np.float32)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], 1) / 16.5


def _star() -> np.ndarray:
    outer, inner = _regular(5, 1.0), _regular(5, 0.42, -90 + 36)
    return np.stack([outer, inner], 1).reshape(10, 2)


def _plus(w: float = 0.3) -> np.ndarray:
    return np.array([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1),
                     (-w, w), (-1, w), (-1, -w), (-w, -w)], np.float32)


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], np.float32)
    return points @ rot.T


#: class name -> list of (polygon in unit coordinates, filled?); unfilled polygons cut holes.
GEOMETRY: dict[str, list[tuple[np.ndarray, bool]]] = {
    "circle": [(_regular(48), True)],
    "square": [(_rect(-0.8, -0.8, 0.8, 0.8), True)],
    "triangle": [(_regular(3, 1.05, -90) + [0, 0.2], True)],
    "star": [(_star(), True)],
    "heart": [(_heart(), True)],
    "ring": [(_regular(48), True), (_regular(48, 0.55), False)],
    "arrow": [(np.array([(-1, -0.25), (0.15, -0.25), (0.15, -0.65), (1, 0), (0.15, 0.65),
                         (0.15, 0.25), (-1, 0.25)]), True)],
    "diamond": [(np.array([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)]), True)],
    "pentagon": [(_regular(5) + [0, 0.1], True)],
    "hexagon": [(_regular(6, 1.0, 0), True)],
    "moon": [(_regular(48), True), (_regular(48, 0.85) + [0.5, -0.2], False)],
    "cross": [(_rotate(_plus(0.27), 45), True)],
    "plus": [(_plus(0.3), True)],
    "bar": [(_rect(-1, -0.28, 1, 0.28), True)],
    "trapezoid": [(np.array([(-1, 0.55), (1, 0.55), (0.45, -0.55), (-0.45, -0.55)]), True)],
    "semicircle": [(_arc(0, 0.45, 1.05, 180, 360), True)],
    "house": [(_rect(-0.6, -0.05, 0.6, 0.95), True),
              (np.array([(-0.95, 0.0), (0, -0.95), (0.95, 0.0)]), True)],
    "hourglass": [(np.array([(-0.75, -1), (0.75, -1), (0.12, 0), (0.75, 1), (-0.75, 1),
                             (-0.12, 0)]), True)],
    "tee": [(_rect(-0.9, -0.95, 0.9, -0.5), True), (_rect(-0.22, -0.5, 0.22, 1.0), True)],
    "chevron": [(np.array([(-1, 0.35), (0, -0.65), (1, 0.35), (1, 0.85), (0, -0.15),
                           (-1, 0.85)]), True)],
}
assert list(GEOMETRY) == SHAPES


def shape_mask(shape: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Boolean (64, 64) mask of ``shape`` centred at (cx, cy), ``radius`` px, rotated ``angle``."""
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(canvas)
    for poly, filled in GEOMETRY[shape]:
        pts = _rotate(np.asarray(poly, np.float32), angle) * radius + [cx, cy]
        draw.polygon([tuple(p) for p in pts.tolist()], fill=255 if filled else 0)
    return np.asarray(canvas) > 127


def _morph(mask: np.ndarray, size: int, grow: bool) -> np.ndarray:
    """Binary dilation (``grow``) or erosion of a (64, 64) mask with a ``size`` square (odd)."""
    r = size // 2
    p = np.pad(mask if grow else ~mask, r)
    rows = p[:, 0:CANVAS].copy()
    for d in range(1, size):
        rows |= p[:, d:d + CANVAS]
    out = rows[0:CANVAS].copy()
    for d in range(1, size):
        out |= rows[d:d + CANVAS]
    return out if grow else ~out


def _pool(a: np.ndarray) -> np.ndarray:
    """2x2 average pooling of a canvas (64, 64[, C]) array: (32, 32, 1 or C) float32 coverage."""
    a = np.asarray(a, np.float32)
    out = 0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2])
    return out if out.ndim == 3 else out[..., None]


def _blur(arr: np.ndarray, passes: int = 1) -> np.ndarray:
    """Binomial [1, 2, 1]/4 smoothing along both axes, ``passes`` times (sigma ~ sqrt(passes/2))."""
    a = np.asarray(arr, np.float32)
    for _ in range(2 * passes):
        b = 0.5 * a
        b[1:] += 0.25 * a[:-1]
        b[:-1] += 0.25 * a[1:]
        b[0] += 0.25 * a[0]
        b[-1] += 0.25 * a[-1]
        a = b.swapaxes(0, 1)  # the next pass smooths the other axis
    return a


def _frac(u: np.ndarray) -> np.ndarray:
    return u - np.floor(u)  # much faster than ``u % 1.0`` in NumPy


_INTERP: dict[tuple[int, int], np.ndarray] = {}


def _interp_matrix(cells: int, size: int) -> np.ndarray:
    """(size, cells) linear interpolation weights from a ``cells`` grid to ``size`` pixels."""
    if (cells, size) not in _INTERP:
        pos = np.clip((np.arange(size) + 0.5) * cells / size - 0.5, 0, cells - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, cells - 1)
        w = np.zeros((size, cells), np.float32)
        w[np.arange(size), lo] += 1 - (pos - lo)
        w[np.arange(size), hi] += pos - lo
        _INTERP[cells, size] = w
    return _INTERP[cells, size]


def _lowfreq(rng: np.random.Generator, cells: int, channels: int, size: int = OUT) -> np.ndarray:
    """Smooth random field (size, size, channels) in [0, 1]: a random grid, upsampled."""
    small = rng.random((cells, cells, channels), dtype=np.float32)
    w = _interp_matrix(cells, size)
    rows = np.tensordot(w, small, (1, 0))  # (size, cells, channels)
    return np.tensordot(rows, w, (1, 1)).transpose(0, 2, 1)  # (size, size, channels)


def _noise(rng: np.random.Generator, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean uniform noise with standard deviation ``sigma`` (cheaper than Gaussian)."""
    return (rng.random(shape, dtype=np.float32) - 0.5) * np.float32(sigma * math.sqrt(12))


def _stripes(rng: np.random.Generator, period: tuple[float, float]) -> np.ndarray:
    """Boolean (64, 64) stripes at a random angle (multiples of 45 deg +-10) and period."""
    angle = math.radians(45 * int(rng.integers(4)) + rng.uniform(-10, 10))
    u = (_XX * math.cos(angle) + _YY * math.sin(angle)) / rng.uniform(*period) + rng.random()
    return _frac(u) < 0.5


def _dots(rng: np.random.Generator, radius: tuple[float, float]) -> np.ndarray:
    s, r = rng.uniform(7, 10), rng.uniform(*radius)
    dx = (_frac(_XX / s + rng.random()) - 0.5) * s
    dy = (_frac(_YY / s + rng.random()) - 0.5) * s
    return dx * dx + dy * dy < r * r


def _pattern(kind: str, rng: np.random.Generator, fine: bool = False) -> np.ndarray:
    """Background pattern weight (32, 32, 1) in [0, 1] (drawn at 64 px and pooled)."""
    if kind == "plain":
        return np.zeros((OUT, OUT, 1), np.float32)
    if kind == "striped":
        return _pool(_stripes(rng, (3.0, 5.0) if fine else (6.0, 11.0)))
    if kind == "dotted":
        return _pool(_dots(rng, (0.8, 1.4) if fine else (1.3, 2.4)))
    if kind == "noisy":
        return rng.random((OUT, OUT, 1), dtype=np.float32)
    raise ValueError(f"unknown background {kind!r}: use one of {BACKGROUNDS}")


def _contrasting(rng: np.random.Generator, colour: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A random background colour in [lo, hi]^3 not too close to the shape colour."""
    for _ in range(8):
        bg = rng.uniform(lo, hi, 3).astype(np.float32)
        if np.abs(bg - colour).mean() > 0.22:
            break
    return bg


def _photo(m: np.ndarray, col: np.ndarray, meta: dict, rng: np.random.Generator) -> np.ndarray:
    cov = _pool(m)
    noisy = meta["background"] == "noisy"
    amp = 0.35 if noisy else 0.6 * int(rng.integers(2)) - 0.3
    pat = _pattern(meta["background"], rng) - (0.5 if noisy else 0.0)
    img = _contrasting(rng, col, 0.2, 0.85) * (1 + amp * pat)
    sx, sy = rng.integers(2, 5, 2)
    shadow = np.zeros_like(m)
    shadow[sy:, sx:] = m[:-sy, :-sx]
    img = img * (1 - 0.45 * _pool(shadow))
    light = rng.uniform(0, 2 * np.pi)
    lx, ly, r = math.cos(light), math.sin(light), meta["radius"]
    t = ((_X32 - meta["x"]) * lx + (_Y32 - meta["y"]) * ly) / r  # -1..1 across the shape
    shade = (0.8 - 0.3 * t)[..., None] * col
    hx, hy = meta["x"] - 0.4 * r * lx, meta["y"] - 0.4 * r * ly
    spot = np.exp(-((_X32 - hx) ** 2 + (_Y32 - hy) ** 2) / (2 * (0.3 * r) ** 2))[..., None]
    shade = shade + rng.uniform(0.2, 0.5) * spot * (1 - shade)
    img = img * (1 - cov) + shade * cov
    a = rng.uniform(0, 2 * np.pi)
    grad = ((_X32 - 32) * math.cos(a) + (_Y32 - 32) * math.sin(a)) / 32
    img = img * (1 + rng.uniform(0.1, 0.25) * grad[..., None])
    img = 0.6 * img + 0.4 * _blur(img)  # soft focus
    return img + _noise(rng, rng.uniform(0.02, 0.04), img.shape)


def _sketch(m: np.ndarray, col: np.ndarray, meta: dict, rng: np.random.Generator) -> np.ndarray:
    paper = 1.0 - rng.uniform(0, 0.06, 3).astype(np.float32)
    kind = meta["background"]
    img = paper * (1 - (0.2 if kind == "noisy" else 0.3) * _pattern(kind, rng, fine=True))
    pencil = col * 0.8
    edge = m & ~_morph(m, 5, grow=False)  # 2 px inside the shape's border
    if rng.random() < 0.5:  # pencil hatching inside the shape
        hatch = 0.35 * _pool(_stripes(rng, (3.0, 4.5)) & m)
        img = img * (1 - hatch) + pencil * hatch
    dy, dx = rng.integers(-1, 2, 2)
    ghost = 0.5 * _pool(np.roll(edge, (int(dy), int(dx)), (0, 1)))
    img = img * (1 - ghost) + pencil * ghost
    e = _pool(edge)
    return img * (1 - e) + pencil * e


def _cartoon(m: np.ndarray, col: np.ndarray, meta: dict, rng: np.random.Generator) -> np.ndarray:
    c1, c2 = (0.55 + 0.45 * rng.random((2, 3))).astype(np.float32)
    if meta["background"] == "noisy":  # confetti: blocky flat-colour noise
        pat = (rng.random((8, 8, 1)) > 0.5).repeat(4, 0).repeat(4, 1).astype(np.float32)
    else:
        pat = _pattern(meta["background"], rng)
    img = c1 * (1 - pat) + c2 * pat
    cov = _pool(m)
    img = img * (1 - cov) + col * cov
    outline = _pool(_morph(m, 5, grow=True) & ~_morph(m, 3, grow=False))
    return img * (1 - outline) + 0.05 * outline


def _painting(m: np.ndarray, col: np.ndarray, meta: dict, rng: np.random.Generator) -> np.ndarray:
    img = _contrasting(rng, col, 0.25, 0.9) + 0.35 * (_lowfreq(rng, 6, 3) - 0.5)
    kind = meta["background"]
    if kind == "noisy":
        img = img + 0.4 * (_lowfreq(rng, 16, 3) - 0.5)
    elif kind != "plain":
        pat = _pattern(kind, rng)
        shift = (2.0 * np.sin(np.arange(OUT) / rng.uniform(2, 4) + rng.random() * 6)).astype(int)
        cols = (np.arange(OUT)[None, :] + shift[:, None]) % OUT  # wobbly pattern
        img = img * (1 - 0.3 * np.take_along_axis(pat[..., 0], cols, 1)[..., None])
    jag = _blur(m, 4) + 0.45 * (_lowfreq(rng, 10, 1, CANVAS)[..., 0] - 0.5)
    cov = _pool(jag + _noise(rng, 0.08, m.shape) > 0.5)
    fill = col + 0.3 * (_lowfreq(rng, 8, 3) - 0.5)
    img = img * (1 - cov) + fill * cov
    streak = np.repeat(rng.random((OUT, 6, 1), dtype=np.float32), 6, 1)[:, :OUT]
    return img * (0.9 + 0.2 * _blur(streak))


_STYLE_FNS = {"photo": _photo, "sketch": _sketch, "cartoon": _cartoon, "painting": _painting}


def sample_geometry(size: str, rng: np.random.Generator) -> dict[str, float]:
    """Random radius (by size), centre (shape kept inside the canvas) and rotation (+-15 deg)."""
    radius = float(rng.uniform(*RADIUS[size]))
    margin = radius + 2
    x, y = rng.uniform(margin, CANVAS - margin, 2)
    return {"radius": radius, "x": float(x), "y": float(y), "angle": float(rng.uniform(-15, 15))}


def render(meta: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Draw one image; ``meta`` needs label, style, colour, background, radius, x, y, angle.

    Masks and line work are drawn at 64 px and average-pooled; colour layers are computed at 32 px
    (the same result as drawing everything at 64 px, at a quarter of the cost).
    Returns a (32, 32, 3) uint8 array.
    """
    mask = shape_mask(meta["label"], meta["x"], meta["y"], meta["radius"], meta["angle"])
    jitter = rng.uniform(-0.06, 0.06, 3).astype(np.float32)
    col = np.clip(np.asarray(COLOURS[meta["colour"]], np.float32) + jitter, 0, 1)
    img = _STYLE_FNS[meta["style"]](mask, col, meta, rng)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
