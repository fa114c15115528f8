"""MLflow: runs (the one module that logs) and the model registry."""
