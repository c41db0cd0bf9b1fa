"""The file MLflow runs to build the pyfunc model ("models from code": the model is this code
plus the folder artifact, nothing pickled). ``search.tracking.registry.log_model`` passes its
path as ``python_model``; MLflow puts the ``clipmodel`` package (``code_paths``) on ``sys.path``
first."""
import mlflow

from clipmodel.pyfunc import ClipClassifierModel

mlflow.models.set_model(ClipClassifierModel())
