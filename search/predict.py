"""``python -m search.predict``: classify images with an exported model.

``--model`` is a model folder (OUTPUT/model, or one ``search.export`` wrote), read with
``clipmodel.folder``, or an MLflow model URI (``models:/NAME/VERSION``, ``models:/m-…``,
``runs:/…``), loaded with ``mlflow.pyfunc.load_model`` from the tracking server or store given by
``--tracking-uri`` (or ``MLFLOW_TRACKING_URI``). Images are files on the command line or the
``path`` column of a CSV (paths relative to ``--root``, default the CSV's folder); when the CSV has
a ``label`` column (class name or index) the accuracy is printed after the predictions.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from clipmodel import folder as model_folder
from search.cli import fail
from trainables.errors import InputError


class PredictError(InputError):
    """Bad input to search.predict; one line naming the fix."""


def read_csv(path: Path, root: Path | None = None) -> tuple[list[str], list[str] | None]:
    """(image paths, labels or None) of a ``path[,label]`` CSV; paths relative to ``root``
    (default: the CSV's folder)."""
    if not path.is_file():
        raise PredictError(f"--csv {path} not found")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise PredictError(f"{path}: needs a 'path' column (and optionally 'label')")
        rows = list(reader)
    base = (root or path.parent).expanduser().absolute()
    paths = [os.path.normpath(os.path.join(base, r["path"])) for r in rows]
    labels = [r["label"] for r in rows] if "label" in reader.fieldnames else None
    return paths, labels


def predict(model: str, paths: list[str], tracking_uri: str | None, batch_size: int
            ) -> tuple[list[str], list[float], list[str]]:
    """(predicted class names, their probabilities, the model's classes)."""
    if Path(model).expanduser().is_dir():
        loaded = model_folder.load(model)
        names, probs = loaded.predict((model_folder.read_image(p) for p in paths), batch_size)
        return names, probs.max(-1).values.tolist(), loaded.classes
    if ":/" not in model:
        raise PredictError(f"--model {model}: neither a model folder nor an MLflow model URI "
                           "(models:/NAME/VERSION)")
    import mlflow
    import pandas as pd
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(model)
    out = pyfunc.predict(pd.DataFrame({"path": paths}))
    classes = list((pyfunc.metadata.metadata or {}).get("classes", []))
    return list(out["label"]), [max(p) for p in out["probabilities"]], classes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.predict",
                                description="Classify images with an exported model.")
    p.add_argument("--model", required=True,
                   help="a model folder (OUTPUT/model) or an MLflow URI (models:/NAME/VERSION)")
    p.add_argument("images", nargs="*", help="image files")
    p.add_argument("--csv", type=Path, help="a CSV with a path column (and a label column)")
    p.add_argument("--root", type=Path, default=None,
                   help="folder the CSV's paths are relative to (default: the CSV's folder; "
                        "for a dataset spec's manifest, the spec's folder)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI for a models:/ URI (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    args = p.parse_args(argv)
    try:
        if bool(args.images) == bool(args.csv):
            raise PredictError("give image files or --csv FILE (one of the two)")
        paths, labels = (read_csv(args.csv, args.root) if args.csv
                         else (list(args.images), None))
        missing = [q for q in paths if not Path(q).is_file()]
        if missing:
            raise PredictError(f"image not found: {missing[0]} ({len(missing)} missing)")
        names, probs, classes = predict(args.model, paths, args.tracking_uri, args.batch_size)
        if labels is not None:
            labels = [classes[int(y)] if y.isdigit() and y not in classes else y for y in labels]
            unknown = sorted({y for y in labels if y not in classes})
            if unknown:
                raise PredictError(f"{args.csv}: labels {unknown[:3]} are not classes of the "
                                   f"model ({classes[:5]}...)")
    except (PredictError, model_folder.FolderError, OSError) as err:
        fail(str(err))
    writer = csv.writer(sys.stdout)
    writer.writerow(["path", "label", "probability"])
    for path, name, prob in zip(paths, names, probs):
        writer.writerow([path, name, f"{prob:.4f}"])
    if labels is not None:
        correct = sum(a == b for a, b in zip(names, labels))
        print(f"accuracy: {100.0 * correct / max(len(labels), 1):.2f}% "
              f"({correct} of {len(labels)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
