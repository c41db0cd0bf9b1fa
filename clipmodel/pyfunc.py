"""The model folder as an MLflow ``pyfunc`` model.

``predict`` takes a DataFrame with one row per image: a ``path`` column (image files) or an
``image`` column (the encoded bytes of image files, e.g. PNG/JPEG; base64 in a serving request).
It returns a DataFrame with ``label`` (the predicted class name) and ``probabilities`` (the class
probabilities, in the order of the model's ``classes`` metadata). The folder is the model's
artifact ``model``; this package travels with it (``code_paths``), so loading needs mlflow,
torch, open_clip, safetensors and Pillow, not the project.
"""
from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd

from .folder import FolderModel, load, read_image

ARTIFACT = "model"     # the key of the folder in the pyfunc's artifacts


class ClipClassifierModel(mlflow.pyfunc.PythonModel):
    """Image classification with an exported (WiSE-FT) open_clip model."""

    def load_context(self, context: Any) -> None:
        self.model: FolderModel = load(context.artifacts[ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None
                ) -> pd.DataFrame:
        if "path" in model_input and model_input["path"].notna().all():
            sources = list(model_input["path"])
        elif "image" in model_input and model_input["image"].notna().all():
            sources = list(model_input["image"])
        else:
            raise ValueError("input needs a 'path' column (image files) or an 'image' column "
                             "(encoded image bytes) with a value in every row")
        names, probs = self.model.predict(read_image(s) for s in sources)
        return pd.DataFrame({"label": names, "probabilities": [p.tolist() for p in probs.double()]})
