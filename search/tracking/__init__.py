"""MLflow: the metric namespace, the study recorder and the Tune callback that logs trials, plots,
result tables and the registered model."""
