"""lakeforge: from a pandas prototype to production ML on Spark, Delta Lake and MLflow."""

__version__ = "0.1.0"
