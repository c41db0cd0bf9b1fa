"""The chosen model in MLflow: logged on the study's run as a pyfunc model and registered."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping
from unittest import mock


def log_model(tracking_uri: str, run_id: str, folder: Path, register_as: str | None,
              info: Mapping[str, Any]) -> dict[str, Any]:
    """Log the model folder on run ``run_id`` as an MLflow pyfunc model and, unless
    ``register_as`` is None, register it under that name in the Model Registry. Returns
    ``{mlflow_model_uri, registered_model, version}``.

    The pyfunc (``clipmodel.pyfunc``) is logged as code, ``clipmodel/mlflow_model.py`` with the
    ``clipmodel`` package (nothing pickled), with an input/output signature and an input example
    (one encoded image).

    MLflow's ``log_model`` is fluent (it logs on the active run of the tracking URI in effect):
    the URIs are set through the environment for this call only (not ``mlflow.set_tracking_uri``,
    which would pin them for the rest of the process), and the finished parent run is re-opened
    for it and closed again (FINISHED)."""
    import io

    import mlflow
    import numpy as np
    import open_clip
    import pandas as pd
    import PIL
    import PIL.Image
    import safetensors
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, Schema

    import clipmodel
    from clipmodel.pyfunc import ARTIFACT

    package = Path(clipmodel.__file__).parent
    signature = ModelSignature(
        inputs=Schema([ColSpec(DataType.string, "path", required=False),
                       ColSpec(DataType.binary, "image", required=False)]),
        outputs=Schema([ColSpec(DataType.string, "label"),
                        ColSpec(Array(DataType.double), "probabilities")]))
    # the input example: one encoded image (portable, unlike a path on this machine)
    example = io.BytesIO()
    PIL.Image.fromarray(np.full((32, 32, 3), 127, np.uint8)).save(example, format="PNG")
    requirements = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                    f"open_clip_torch=={open_clip.__version__}",
                    f"safetensors=={safetensors.__version__}", f"pillow=={PIL.__version__}",
                    f"pandas=={pd.__version__}"]
    with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": tracking_uri,
                                      "MLFLOW_REGISTRY_URI": tracking_uri}):
        with mlflow.start_run(run_id=run_id):
            model = mlflow.pyfunc.log_model(
                name="model", python_model=str(package / "mlflow_model.py"),
                artifacts={ARTIFACT: str(folder)}, code_paths=[str(package)],
                signature=signature, input_example=pd.DataFrame({"image": [example.getvalue()]}),
                pip_requirements=requirements, registered_model_name=register_as,
                metadata={"classes": list(info["classes"]), "alpha": info["alpha"],
                          "method": info["method"], "source": info["source"]})
    return {"mlflow_model_uri": model.model_uri, "registered_model": register_as,
            "version": None if register_as is None else int(model.registered_model_version)}


__all__ = ["log_model"]
