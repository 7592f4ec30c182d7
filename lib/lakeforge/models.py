"""The model classes lakeforge registers (MLflow pyfunc), besides registry.ProbabilityModel.

Each one is registered as a pickled pyfunc (what mlflow.pyfunc.load_model and spark_udf serve) and, for
LightGBM and linear estimators, as model files (model_files): lakeforge's own scoring rebuilds the model
from those, never from the pickle.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class RegressionModel(PythonModel):
    """A regressor served as its prediction, for the columns it was trained on."""

    def __init__(self, estimator, feature_names: list[str]):
        self.estimator = estimator
        self.feature_names = list(feature_names)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return np.asarray(self.estimator.predict(model_input[self.feature_names]), dtype="float64")


class MulticlassModel(PythonModel):
    """A multiclass classifier served as its class probabilities, one column per class of `classes`."""

    def __init__(self, estimator, feature_names: list[str], classes: list[str]):
        self.estimator = estimator
        self.feature_names = list(feature_names)
        self.classes = list(classes)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(model_input[self.feature_names]), dtype="float64")


class RoutingModel(PythonModel):
    """One model per group (e.g. per store) behind one registered model: each row goes to its group's model,
    or to the fallback (a global model) for a group that had too little history or is new."""

    def __init__(self, models: dict, fallback, group_key: str, inputs: list[str], task: str):
        self.models = dict(models)
        self.fallback = fallback
        self.group_key = group_key
        self.inputs = list(inputs)  # the estimators' columns (without the group key)
        self.task = task

    @property
    def feature_names(self) -> list[str]:
        """Every column the model reads: the group key, then the estimators' inputs."""
        return [self.group_key, *[c for c in self.inputs if c != self.group_key]]

    def model_for(self, group):
        return self.models.get(group, self.fallback)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        out = np.empty(len(model_input), dtype="float64")
        x = model_input[self.inputs]
        for group, rows in model_input.groupby(self.group_key, sort=False, dropna=False).indices.items():
            estimator = self.model_for(group)
            part = x.iloc[rows]
            out[rows] = (estimator.predict_proba(part)[:, 1] if self.task == "classification"
                         else estimator.predict(part))
        return out


class LinearProbability:
    """A logistic regression's coefficients (from Spark MLlib) as a NumPy classifier: predict_proba on pandas."""

    def __init__(self, coefficients: np.ndarray, intercept: float, feature_names: list[str]):
        self.coefficients = np.asarray(coefficients, dtype="float64")
        self.intercept = float(intercept)
        self.feature_names_in_ = np.array(feature_names)
        self.feature_importances_ = np.abs(self.coefficients)

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        margin = x.to_numpy(dtype="float64") @ self.coefficients + self.intercept
        p = 1.0 / (1.0 + np.exp(-margin))
        return np.column_stack([1.0 - p, p])
