"""The embedded world: a generated image-text domain for running the whole study offline.

20 shape classes drawn in 4 styles (photo = in-distribution; sketch, cartoon, painting = shifts),
captions from randomised templates, and a tiny CLIP pretrained on it (``tiny-clip-32``).

- :mod:`.render` draws one image from its metadata (PIL + NumPy).
- :mod:`.captions` writes captions, the stand-in noisy captioner and the prompt templates.
- :mod:`.generate` writes the datasets and ``world.yaml`` (``ensure_world``, ``default_world_dir``).
- :mod:`.pretrain` pretrains the tiny CLIP that ships in ``trainables/assets``.
"""
from .generate import default_world_dir, ensure_world, generate_world  # noqa: F401
