"""Machine learning on Spark MLlib: featureEngineering, trainModel, predict, evaluateModel;
models saved to a path or MLflow's registry (tracking)."""
from pipeline_defs.steps.ml import evaluate, features, scoring, train  # noqa: F401 - registrations
