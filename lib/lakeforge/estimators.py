"""Estimators as configuration: `lightgbm`, `xgboost`, or a scikit-learn-compatible class named by its import path.

`model.estimator` names the class; `model.params` are its constructor's arguments, type-checked where
lakeforge knows them (KNOWN_PARAMS) and passed through otherwise. An import path is imported and must
name a class with `fit` and `predict_proba` (classification) or `predict` (regression); nothing else
in the named module is called. The YAML can therefore name code to import: it is as trusted as the
pipeline's own feature functions.

String feature columns are model inputs. Their categories are fixed at training (sorted values of the
training rows) and stored with the model as data (model_files' model.json); LightGBM and XGBoost get
them as a pandas `category` column (native categorical splits), every other estimator as the category's
position (an ordinal code, a float). A value not among them, at scoring, is missing (NaN) for the
estimator and counted by scoring; it is never an error.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re

import numpy as np
import pandas as pd

from lakeforge.metrics import CLASSIFICATION, MULTICLASS

LIGHTGBM, XGBOOST = "lightgbm", "xgboost"
BUILT_IN = (LIGHTGBM, XGBOOST)
INT, FLOAT, STR, BOOL = "an integer", "a number", "a string", "true or false"
_GBM_COMMON = {"n_estimators": INT, "max_depth": INT, "learning_rate": FLOAT, "subsample": FLOAT,
               "colsample_bytree": FLOAT, "reg_alpha": FLOAT, "reg_lambda": FLOAT, "min_child_weight": FLOAT,
               "objective": STR, "max_bin": INT}
KNOWN_PARAMS: dict[str, dict[str, str]] = {
    LIGHTGBM: {**_GBM_COMMON, "num_leaves": INT, "min_child_samples": INT, "subsample_freq": INT,
               "min_split_gain": FLOAT, "boosting_type": STR, "max_cat_to_onehot": INT, "cat_smooth": FLOAT,
               "min_data_per_group": INT, "is_unbalance": BOOL},
    XGBOOST: {**_GBM_COMMON, "max_leaves": INT, "gamma": FLOAT, "colsample_bylevel": FLOAT,
              "colsample_bynode": FLOAT, "scale_pos_weight": FLOAT, "max_cat_to_onehot": INT,
              "max_delta_step": FLOAT, "tree_method": STR, "grow_policy": STR, "booster": STR},
}
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def type_problem(kind: str, value) -> str | None:
    """Why `value` is not of `kind` (None when it is): an integer is a number, true/false is neither."""
    ok = {INT: isinstance(value, int) and not isinstance(value, bool),
          FLOAT: isinstance(value, (int, float)) and not isinstance(value, bool),
          STR: isinstance(value, str), BOOL: isinstance(value, bool)}[kind]
    return None if ok else f"expected {kind}, got {value!r} ({type(value).__name__})"


def resolve(estimator: str, task: str) -> type:
    """The class `model.estimator` names for the task; ValueError saying why not (no call beyond the import)."""
    if estimator == LIGHTGBM:
        from lightgbm import LGBMClassifier, LGBMRegressor

        return LGBMRegressor if task not in (CLASSIFICATION, MULTICLASS) else LGBMClassifier
    if estimator == XGBOOST:
        from xgboost import XGBClassifier, XGBRegressor

        return XGBRegressor if task not in (CLASSIFICATION, MULTICLASS) else XGBClassifier
    if not _DOTTED.match(estimator):
        raise ValueError(f"'{estimator}' is neither lightgbm, xgboost nor an import path of a class "
                         f"(e.g. sklearn.ensemble.HistGradientBoostingClassifier)")
    module_name, _, name = estimator.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module '{module_name}' ({exc}); install it or fix the path") from None
    found = inspect.getattr_static(module, name, None)
    if found is None:
        classes = [n for n in dir(module)
                   if not n.startswith("_") and inspect.isclass(inspect.getattr_static(module, n))]
        near = difflib.get_close_matches(name, classes, n=1)
        raise ValueError(f"module '{module_name}' has no '{name}'"
                         + (f"; did you mean '{module_name}.{near[0]}'?" if near else ""))
    if not inspect.isclass(found):
        raise ValueError(f"'{estimator}' is not a class ({type(found).__name__}); "
                         f"model.estimator names an estimator class, not a function or value")
    needed = "predict_proba" if task in (CLASSIFICATION, MULTICLASS) else "predict"
    missing = [m for m in ("fit", needed) if not callable(getattr(found, m, None))]
    if missing:
        raise ValueError(f"class '{estimator}' has no {' or '.join(missing)}: a {task} estimator needs fit and "
                         f"{needed} (scikit-learn's estimator API)")
    return found


def _accepts(cls: type) -> tuple[set[str], bool]:
    """The constructor's keyword names, and whether it takes **kwargs (then any name passes)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return ({p.name for p in parameters if p.name != "self"},
            any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters))


def param_problems(estimator: str, task: str, params: dict) -> list[tuple[str, str]]:
    """(key, problem) for each parameter of the wrong type (known parameters) or an unknown name (an import
    path whose constructor takes no **kwargs)."""
    known = KNOWN_PARAMS.get(estimator, {})
    problems = [(k, p) for k, v in params.items() if k in known and (p := type_problem(known[k], v))]
    if estimator not in BUILT_IN:
        names, anything = _accepts(resolve(estimator, task))
        problems += [(k, f"{estimator} takes no argument '{k}' (it takes {', '.join(sorted(names))})")
                     for k in params if not anything and k not in names]
    return problems


def integer_params(estimator: str) -> set[str]:
    """Parameters a search's float draw is cast to int for."""
    return {k for k, kind in KNOWN_PARAMS.get(estimator, {}).items() if kind == INT}


def one_thread(estimator: str, task: str) -> dict:
    """Arguments that keep a fit inside one Spark task to one thread, deterministic for a fixed thread count.

    A search trial or one group's model shares the executor's cores with the other tasks, one task per
    core: LightGBM's default (every core in every task) oversubscribes them."""
    if estimator == LIGHTGBM:
        return {"n_jobs": 1, "deterministic": True, "force_row_wise": True}
    if estimator == XGBOOST:
        return {"n_jobs": 1}
    names, anything = _accepts(resolve(estimator, task))
    return {"n_jobs": 1} if "n_jobs" in names or anything else {}


def defaults(estimator: str, task: str, seed: int) -> dict:
    """Deterministic, quiet, one-thread arguments given before model.params."""
    if estimator == LIGHTGBM:
        return {"random_state": seed, **one_thread(estimator, task), "verbose": -1}
    if estimator == XGBOOST:
        return {"random_state": seed, **one_thread(estimator, task), "tree_method": "hist", "verbosity": 0}
    names, anything = _accepts(resolve(estimator, task))
    return {**({"random_state": seed} if "random_state" in names else {}), **one_thread(estimator, task)}


def categories_of(x: pd.DataFrame, columns: list[str]) -> dict[str, list[str]]:
    """Each string column's categories: its sorted distinct values in the training rows (nulls left out)."""
    return {c: sorted({str(v) for v in x[c].dropna()}) for c in columns}


def encode(x: pd.DataFrame, categories: dict[str, list[str]], native: bool) -> pd.DataFrame:
    """The rows as the estimator takes them: each categorical column as a pandas category with the training
    categories (native) or as the category's position, a float (NaN for a null or a value not among them)."""
    if not categories:
        return x
    out = x.copy()
    for column, values in categories.items():
        as_text = out[column].astype("object").where(out[column].notna(), None)
        as_text = as_text.map(lambda v: v if v is None else str(v))
        codes = pd.Categorical(as_text, categories=values)
        out[column] = codes if native else np.where(codes.codes < 0, np.nan, codes.codes.astype("float64"))
    return out


def unseen(values: pd.Series, known: list[str]) -> int:
    """How many non-null values are not among the training categories."""
    present = values.dropna().astype(str)
    return int((~present.isin(known)).sum())


class Fitted:
    """A fitted estimator with its inputs' encoding (and, for multiclass, its classes): what the registered
    model calls, identical at training and scoring."""

    def __init__(self, estimator_name: str, estimator, inputs: list[str], categories: dict[str, list[str]],
                 classes: list[str] | None = None):
        self.estimator_name = estimator_name
        self.estimator = estimator
        self.inputs = list(inputs)
        self.categories = dict(categories)
        self.classes = list(classes) if classes is not None else None
        self.native = estimator_name in BUILT_IN

    def frame(self, x: pd.DataFrame) -> pd.DataFrame:
        return encode(x[self.inputs], self.categories, self.native)

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(self.frame(x)), dtype="float64")

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.estimator.predict(self.frame(x)), dtype="float64")

    @property
    def feature_importances_(self):
        """The estimator's importances (None when it has none, e.g. a linear model without coef_)."""
        return getattr(self.estimator, "feature_importances_", None)

    @property
    def feature_names_in_(self):
        return np.array(self.inputs)


def fit(estimator: str, task: str, params: dict, x: pd.DataFrame, y: pd.Series,
        categories: dict[str, list[str]] | None = None, classes: list[str] | None = None) -> Fitted:
    """Fit the named estimator with exactly these arguments: a classifier on 0/1 labels, on class positions
    (multiclass, `classes` in order) or a regressor; string columns encoded as `categories` say."""
    categories = categories or {}
    cls = resolve(estimator, task)
    arguments = dict(params)
    if estimator == XGBOOST and categories:
        arguments.setdefault("enable_categorical", True)
    if task == MULTICLASS:
        at = {c: i for i, c in enumerate(classes or [])}
        target = np.array([at[str(v)] for v in y], dtype="int64")
    elif task == CLASSIFICATION:
        target = y.astype("int64").to_numpy()
    else:
        target = y.astype("float64").to_numpy()
    fitted = Fitted(estimator, None, list(x.columns), categories, classes if task == MULTICLASS else None)
    fitted.estimator = cls(**arguments).fit(fitted.frame(x), target)
    return fitted
