"""Training pieces without Spark: the TPE search with sequential Trials, per-group fitting and routing,
the gate on a lower-is-better metric, precision at k, and count labels on pandas."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from lakeforge import config, features, many_models, training, tuning
from lakeforge.config import Gate, SearchParam
from lakeforge.models import RoutingModel
from lakeforge.registry import CHALLENGER, CHAMPION, decide


def _rows(n: int = 400, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
                         "y": (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=n) > 0).astype("int64")})


SPACE = {"num_leaves": SearchParam(type="quniform", low=3, high=15, q=1),
         "learning_rate": SearchParam(type="loguniform", low=0.02, high=0.3),
         "min_child_samples": SearchParam(type="choice", values=[5, 10, 20])}
BASE = {"random_state": 7, "n_jobs": 1, "deterministic": True, "force_row_wise": True, "verbose": -1,
        "n_estimators": 20}


def test_sequential_search_is_reproducible_and_returns_the_best_trial():
    rows = _rows()
    fit, valid = rows.iloc[:300], rows.iloc[300:]
    first = tuning.search(fit, valid, ["a", "b", "c"], "y", "classification", BASE, SPACE, 6, 1, seed=11)
    again = tuning.search(fit, valid, ["a", "b", "c"], "y", "classification", BASE, SPACE, 6, 1, seed=11)
    assert first.trials == again.trials and len(first.trials) == 6
    best_params, best_loss = min(first.trials, key=lambda t: t[1])
    assert (first.best_params, first.best_loss) == (best_params, best_loss)
    assert isinstance(best_params["num_leaves"], int) and best_params["min_child_samples"] in (5, 10, 20)
    assert 0.02 <= best_params["learning_rate"] <= 0.3


def test_per_group_fit_and_routing_use_each_groups_model_or_the_fallback():
    rows = _rows(300).assign(store=np.repeat(["S1", "S2", "S3"], [140, 140, 20]),
                             day=np.tile(np.arange(100), 3))
    fitted = pd.concat([many_models.fit_group(g, "store", ["a", "b", "c"], "y", "regression", BASE, 30, ["day"])
                        for _, g in rows.groupby("store")], ignore_index=True)
    assert fitted[["store", "train_rows"]].values.tolist() == [["S1", 140], ["S2", 140], ["S3", 20]]
    assert fitted["model"].isna().tolist() == [False, False, True]
    per_group = many_models.unpickle(fitted, "store")
    fallback = training.fit_estimator("regression", BASE, rows[["a", "b", "c"]], rows["y"])
    model = RoutingModel(per_group, fallback, "store", ["a", "b", "c"], "regression")
    assert model.feature_names == ["store", "a", "b", "c"]
    scored = rows.assign(store=rows["store"].replace({"S3": "S9"}))  # S9: a store never seen in training
    out = model.predict(None, scored)
    for store, estimator in (("S1", per_group["S1"]), ("S2", per_group["S2"]), ("S9", fallback)):
        mask = (scored["store"] == store).to_numpy()
        assert np.array_equal(out[mask], estimator.predict(scored.loc[mask, ["a", "b", "c"]]))
    # The same group rows in another order give the same model (rows are sorted before fitting).
    shuffled = rows[rows["store"] == "S1"].sample(frac=1.0, random_state=1)
    again = many_models.fit_group(shuffled, "store", ["a", "b", "c"], "y", "regression", BASE, 30, ["day"])
    assert np.array_equal(many_models.unpickle(again, "store")["S1"].predict(rows[["a", "b", "c"]]),
                          per_group["S1"].predict(rows[["a", "b", "c"]]))


@pytest.mark.filterwarnings("error::FutureWarning")  # pandas' downcasting in the outer merge of a new group
def test_the_manifest_measures_each_group_by_the_pipelines_gate_metric_where_its_rows_define_it():
    groups = pd.DataFrame({"region": ["N", "S", "W"], "train_rows": [40, 40, 3], "own_model": [True, True, False]})
    holdout = pd.DataFrame({"region": ["N", "N", "N", "N", "S", "S", "E"], "y": [0, 1, 0, 1, 1, 1, 0]})
    p = np.array([0.1, 0.8, 0.6, 0.4, 0.7, 0.9, 0.2])
    out = many_models.group_metrics(groups, holdout, p, "region", "y", "classification", "auc")
    # N: pairs (0.8>0.1), (0.8>0.6), (0.4>0.1), (0.4<0.6): AUC 3/4. S has one class and E one row: undefined.
    assert out[["region", "holdout_rows", "metric"]].values.tolist() == [
        ["E", 1, "auc"], ["N", 4, "auc"], ["S", 2, "auc"], ["W", 0, "auc"]]
    assert out["metric_value"].tolist()[1] == 0.75
    assert [pd.isna(v) for v in out["metric_value"]] == [True, False, True, True]
    assert out["mae"].tolist()[1] == pytest.approx((0.1 + 0.2 + 0.6 + 0.6) / 4)
    assert many_models.group_metric_values(out, "region") == {
        "region.E.mae": 0.2, "region.E.mape": 0.2, "region.N.mae": pytest.approx(0.375),
        "region.N.mape": pytest.approx(0.375), "region.N.auc": 0.75, "region.S.mae": pytest.approx(0.2),
        "region.S.mape": pytest.approx(0.2)}


def test_balanced_slots_take_the_largest_group_first_into_the_emptiest_slot():
    sizes = {"A": 700, "B": 500, "C": 400, "D": 300, "E": 100, None: 50}
    assert many_models.balanced_slots(sizes, 2) == {"A": 0, "B": 1, "C": 1, "D": 0, "E": 1, None: 0}  # 1050 | 1000
    assert many_models.balanced_slots(sizes, 8) == {"A": 0, "B": 1, "C": 2, "D": 3, "E": 4, None: 5}
    assert many_models.balanced_slots({}, 4) == {}


def test_gate_on_mae_lower_is_better():
    gate = Gate(max_mae=2.0, min_improvement=0.1)
    assert decide(1.5, None, gate, "mae").alias == CHAMPION
    above = decide(2.5, None, gate, "mae")
    assert (above.alias, above.reason) == (CHALLENGER, "holdout MAE 2.5000 above the ceiling 2.0000")
    assert decide(1.3, 1.5, gate, "mae").alias == CHAMPION
    kept = decide(1.45, 1.5, gate, "mae")
    assert (kept.alias, kept.reason) == (
        CHALLENGER, "holdout MAE 1.4500 > champion's 1.5000 - 0.1000 on the same rows; champion kept")


def test_precision_at_k_and_regression_metrics():
    p = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.05])
    y = np.array([1, 0, 1, 0, 0, 0, 0, 1, 0, 0])
    assert training.precision_at_k(p, y, 0.3) == pytest.approx(2 / 3)
    assert training.precision_at_k(p, y, 0.1) == 1.0
    m = training.regression_metrics(np.array([2.0, 0.0, 5.0]), pd.Series([1, 0, 10]))
    assert m == {"mae": pytest.approx(2.0), "mape": pytest.approx((1.0 + 0.0 + 0.5) / 3),
                 "rmse": pytest.approx((26 / 3) ** 0.5), "r2": pytest.approx(1 - 26 / (182 / 3)), "rows": 3.0}


def test_count_labels_on_pandas_use_only_the_horizon():
    demand = config.load_pipeline("demand")
    orders = pd.DataFrame({"store_id": ["S1", "S1", "S1", "S2", "S1"],
                           "order_ts": ["2026-06-01 08:00:00", "2026-06-01 23:59:59", "2026-06-02 00:00:00",
                                        "2026-05-31 12:00:00", "2026-05-31 23:00:00"]})
    keys = pd.DataFrame({"store_id": ["S1", "S2"], "as_of_date": [dt.date(2026, 6, 1)] * 2})
    out = features.labels_pandas(orders, keys, demand)
    assert out.values.tolist() == [["S1", dt.date(2026, 6, 1), 2], ["S2", dt.date(2026, 6, 1), 0]]


def test_model_settings_that_do_not_fit_together_are_config_errors():
    from lakeforge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"demand.yaml: key 'model.metric': 'auc' is not a regression metric; "
                                          r"choose one of mae, rmse, mape, r2, or declare your own under model\.own_metrics$"):
        config.load_pipeline("demand", ["pipeline.model.metric=auc"])
    with pytest.raises(ConfigError, match=r"key 'model.group_key': 'region' is not a feature column"):
        config.load_pipeline("demand", ["pipeline.model.group_key=region"])
    with pytest.raises(ConfigError, match=r"key 'model.distributed'"):
        config.load_pipeline("demand", ["pipeline.model.distributed=true"])
