"""Estimators as configuration without Spark: a search over XGBoost and over a class by import path, string inputs
encoded the same way at training and scoring, an unseen category missing (and counted), never an error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lakeforge import estimators, training, tuning
from lakeforge.config import SearchParam


def _rows(n: int = 300, seed: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    colour = rng.choice(["blue", "green", "red"], n)
    return pd.DataFrame({"colour": colour, "noise": rng.normal(size=n),
                         "y": ((colour == "red") ^ (rng.random(n) < 0.1)).astype("int64")})


@pytest.mark.parametrize("estimator, space, integer", [
    ("xgboost", {"max_depth": SearchParam(type="quniform", low=2, high=5, q=1),
                 "learning_rate": SearchParam(type="loguniform", low=0.05, high=0.5)}, "max_depth"),
    ("sklearn.ensemble.HistGradientBoostingClassifier",  # no known types: a whole quniform step gives an int
     {"max_iter": SearchParam(type="quniform", low=5, high=20, q=5),
      "learning_rate": SearchParam(type="uniform", low=0.05, high=0.5)}, "max_iter"),
])
def test_a_search_runs_over_any_estimator_and_repeats(estimator, space, integer):
    rows = _rows()
    spec = training.EstimatorSpec(estimator, "classification", estimators.categories_of(rows, ["colour"]))
    base = estimators.defaults(estimator, "classification", 7) | ({"n_estimators": 10} if estimator == "xgboost" else {})
    fit, valid = rows.iloc[:200], rows.iloc[200:]
    first = tuning.search(fit, valid, ["colour", "noise"], "y", spec, base, space, 4, 1, seed=5)
    again = tuning.search(fit, valid, ["colour", "noise"], "y", spec, base, space, 4, 1, seed=5)
    assert first.trials == again.trials and len(first.trials) == 4
    assert all(type(params[integer]) is int for params, _ in first.trials)
    assert first.best_loss < 0.45  # the colour decides y (log loss of a constant 0.33 would be 0.64)


def test_string_inputs_are_encoded_with_the_training_categories_and_an_unseen_one_is_missing():
    rows = _rows()
    categories = estimators.categories_of(rows, ["colour"])
    assert categories == {"colour": ["blue", "green", "red"]}
    scoring = pd.DataFrame({"colour": ["red", "violet", None, "blue"], "noise": [0.0] * 4})
    codes = estimators.encode(scoring, categories, native=False)["colour"]
    assert codes.tolist()[0::3] == [2.0, 0.0] and codes.isna().tolist() == [False, True, True, False]
    native = estimators.encode(scoring, categories, native=True)["colour"]
    assert list(native.cat.categories) == ["blue", "green", "red"] and native.isna().tolist() == [False, True, True,
                                                                                                     False]
    assert estimators.unseen(scoring["colour"], categories["colour"]) == 1  # violet; a null is not unseen
    fitted = estimators.fit("lightgbm", "classification", estimators.defaults("lightgbm", "classification", 7)
                            | {"n_estimators": 20}, rows[["colour", "noise"]], rows["y"], categories)
    p = fitted.predict_proba(scoring)[:, 1]
    assert p[0] > 0.7 > 0.3 > p[3]  # red and blue told apart; violet scores like a missing value, no error
    assert p[1] == p[2]
