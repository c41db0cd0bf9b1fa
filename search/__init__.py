"""The search driver's library: search spaces (YAML), MLflow tracking and frontier plots."""
