"""Data-parallel training: a Spark MLlib learner fitted on the executors, for training sets the driver cannot hold.

The training rows never leave Spark; only the fitted coefficients come back, wrapped as a NumPy
classifier (models.LinearProbability), so the registered model and the scoring path are the same
as for a model trained on the driver.
"""

from __future__ import annotations

from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakeforge.models import LinearProbability

DEFAULTS = {"maxIter": 100, "regParam": 0.01, "elasticNetParam": 0.0, "standardization": True, "tol": 1e-9}


def fit_logistic(train: DataFrame, feature_cols: list[str], label: str, params: dict | None = None) -> LinearProbability:
    """Logistic regression with Spark MLlib (L-BFGS over the partitions); params are MLlib's (e.g. regParam)."""
    assembled = VectorAssembler(inputCols=feature_cols, outputCol="_features").transform(
        train.select(*[F.col(c).cast("double") for c in feature_cols], F.col(label).cast("double").alias("_label")))
    learner = LogisticRegression(featuresCol="_features", labelCol="_label", **{**DEFAULTS, **(params or {})})
    model = learner.fit(assembled)
    return LinearProbability(model.coefficients.toArray(), model.intercept, feature_cols)
