"""Each metric of lakeforge.metrics on hand-computed rows, its direction, and the gate's use of it (pure)."""

import numpy as np
import pytest

from lakeforge import metrics
from lakeforge.config import Gate
from lakeforge.registry import CHALLENGER, CHAMPION, decide

Y = np.array([1, 0, 1, 0])
P = np.array([0.9, 0.6, 0.4, 0.1])  # hard at 0.5: 1, 1, 0, 0
CLASSES = ["a", "b", "c"]
LABELS = np.array(["a", "b", "c", "a"])
MATRIX = np.array([[0.5, 0.3, 0.2],   # a: right
                   [0.2, 0.6, 0.2],   # b: right
                   [0.5, 0.1, 0.4],   # c: predicted a
                   [0.8, 0.1, 0.1]])  # a: right


def test_classification_metrics_by_hand():
    # Pairs (positive, negative): (0.9, 0.6) (0.9, 0.1) (0.4, 0.1) ranked right, (0.4, 0.6) wrong: 3 of 4.
    assert metrics.value("auc", "classification", Y, P) == 0.75
    assert metrics.value("log_loss", "classification", Y, P) == pytest.approx(
        -(np.log(0.9) + np.log(0.4) + np.log(0.4) + np.log(0.9)) / 4)
    assert metrics.value("accuracy", "classification", Y, P) == 0.5   # rows 1 and 4 right
    assert metrics.value("f1", "classification", Y, P) == 0.5         # tp 1, fp 1, fn 1: 2 / (2 + 1 + 1)
    assert metrics.value("precision_at_k", "classification", Y, P, top_k=0.5) == 0.5  # top 2: 0.9 (1), 0.6 (0)
    assert metrics.value("precision_at_k", "classification", Y, P, top_k=0.25) == 1.0
    assert metrics.value("auc", "classification", np.array([1, 1]), np.array([0.2, 0.3])) is None  # one class


def test_regression_metrics_by_hand():
    y, p = np.array([1.0, 0.0, 10.0]), np.array([2.0, 0.0, 5.0])  # errors 1, 0, -5
    assert metrics.value("mae", "regression", y, p) == 2.0
    assert metrics.value("rmse", "regression", y, p) == pytest.approx(np.sqrt(26 / 3))
    assert metrics.value("mape", "regression", y, p) == pytest.approx((1 / 1 + 0 / 1 + 5 / 10) / 3)  # max(actual, 1)
    assert metrics.value("r2", "regression", y, p) == pytest.approx(1 - 26 / (182 / 3))  # mean 11/3
    assert metrics.value("r2", "regression", np.array([2.0, 2.0]), np.array([1.0, 3.0])) is None  # no variance


def test_multiclass_metrics_by_hand():
    assert metrics.value("log_loss", "multiclass", LABELS, MATRIX, CLASSES) == pytest.approx(
        -(np.log(0.5) + np.log(0.6) + np.log(0.4) + np.log(0.8)) / 4)
    assert metrics.value("accuracy", "multiclass", LABELS, MATRIX, CLASSES) == 0.75
    # F1 per class: a: tp 2, fp 1, fn 0 -> 0.8; b: 1.0; c: tp 0 -> 0.0; macro (0.8 + 1 + 0) / 3.
    assert metrics.value("macro_f1", "multiclass", LABELS, MATRIX, CLASSES) == pytest.approx(1.8 / 3)
    with pytest.raises(ValueError, match=r"label value\(s\) z are not among the model's classes \(a, b, c\)"):
        metrics.value("accuracy", "multiclass", np.array(["z"]), MATRIX[:1], CLASSES)


def test_each_metric_knows_its_tasks_and_direction():
    assert metrics.for_task("classification") == ["auc", "log_loss", "f1", "accuracy", "precision_at_k"]
    assert metrics.for_task("multiclass") == ["log_loss", "accuracy", "macro_f1"]
    assert metrics.for_task("regression") == ["mae", "rmse", "mape", "r2"]
    higher = {name for name, m in metrics.REGISTRY.items() if m.higher_is_better}
    assert higher == {"auc", "f1", "accuracy", "precision_at_k", "macro_f1", "r2"}
    assert metrics.loss("auc", "classification", Y, P) == -0.75 and metrics.loss("mae", "regression", [1], [3]) == 2
    assert metrics.better("auc", 0.8, 0.7) and not metrics.better("mae", 3.0, 2.0)
    assert metrics.better("mae", 2.0, 3.0, by=0.5) and not metrics.better("mae", 2.0, 3.0, by=1.0)
    assert metrics.worse_than("r2", 0.6, 0.1) == pytest.approx(0.5) and metrics.worse_than("rmse", 2.0, 0.5) == 2.5


def test_the_gate_refuses_a_version_that_does_not_beat_the_naive_answer_naming_both_figures():
    refused = decide(4.0, None, Gate(), "mae", {"mean": 5.0, "last_week": 3.5})
    assert refused.alias == CHALLENGER
    assert refused.reason == ("holdout MAE 4.0000 does not beat the naive last_week MAE 3.5000 by more than 0.0000 "
                              "(gate.beat_naive_by) on the same rows; set gate.beat_naive: false to promote it anyway")
    assert decide(3.4, None, Gate(), "mae", {"mean": 5.0, "last_week": 3.5}).alias == CHAMPION
    assert decide(3.4, None, Gate(beat_naive_by=0.2), "mae", {"last_week": 3.5}).alias == CHALLENGER
    assert decide(4.0, None, Gate(beat_naive=False), "mae", {"last_week": 3.5}).alias == CHAMPION
    tie = decide(0.5, None, Gate(), "auc", {"base_rate": 0.5})
    assert tie.alias == CHALLENGER and "AUC 0.5000 does not beat the naive base_rate AUC 0.5000" in tie.reason


def test_the_gate_compares_with_the_champion_in_the_metrics_direction():
    assert decide(0.71, 0.65, Gate(min_improvement=0.05), "r2").reason == \
        "holdout R2 0.7100 >= champion's 0.6500 + 0.0500 on the same rows"
    assert decide(0.50, 0.45, Gate(min_improvement=0.01), "log_loss").reason == \
        "holdout LOG_LOSS 0.5000 > champion's 0.4500 - 0.0100 on the same rows; champion kept"


def test_a_teams_own_metric_is_called_with_the_labels_and_predictions_and_knows_its_direction():
    metrics.register_own("late_cost", "parcels.late_cost", False, metrics.CLASSIFICATION)
    y, p = np.array([1, 1, 0, 0]), np.array([0.9, 0.2, 0.7, 0.1])
    # One late parcel not warned (2) and one warning on time (1), over 4 parcels.
    assert metrics.value("late_cost", metrics.CLASSIFICATION, y, p) == 0.75
    assert metrics.loss("late_cost", metrics.CLASSIFICATION, y, p) == 0.75  # lower is better: the loss itself
    assert metrics.better("late_cost", 0.5, 0.75) and not metrics.higher_is_better("late_cost")
    assert metrics.is_own("late_cost") and "late_cost" not in metrics.for_task(metrics.CLASSIFICATION)
    with pytest.raises(KeyError, match="unknown metric 'no_such_metric'"):
        metrics.higher_is_better("no_such_metric")


def test_a_gate_metric_undefined_on_the_holdout_stops_training_before_anything_is_registered():
    import pandas as pd

    from lakeforge import config, training
    from lakeforge.errors import DataError

    own = "pipeline.model.own_metrics.undefined_cost"
    pipeline = config.load_pipeline("churn", [f"{own}.function=parcels.undefined_cost", f"{own}.higher_is_better=false",
                                              "pipeline.model.metric=undefined_cost"])
    holdout = pd.DataFrame({"churned": [0, 1, 0, 1]})
    constant = type("Constant", (), {"predict": lambda self, context, rows: np.full(len(rows), 0.5)})()
    data = training.TrainingSet(None, None, holdout, [], "churned", [], None)
    with pytest.raises(DataError, match=r"^model.metric undefined_cost \(the team's own parcels.undefined_cost\) is "
                                        r"undefined on the holdout's 4 rows; nothing was registered"):
        training.evaluate_holdout(pipeline, training.Trained(constant, {}, 4), data, log=lambda _: None)


def test_the_champion_is_judged_by_the_teams_own_metric_on_the_same_holdout():
    import pandas as pd

    from lakeforge import config, training

    own = "pipeline.model.own_metrics.late_cost"
    pipeline = config.load_pipeline("churn", [f"{own}.function=parcels.late_cost", f"{own}.higher_is_better=false",
                                              "pipeline.model.metric=late_cost"])
    holdout = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "churned": [1, 1, 0, 0]})
    champion = type("Champion", (), {"feature_names": ["x"],
                                     "predict": lambda self, context, rows: np.array([0.9, 0.2, 0.7, 0.1])})()
    data = training.TrainingSet(None, None, holdout, ["x"], "churned", [], None)
    assert training.champion_metric(champion, data, pipeline) == 0.75  # as late_cost by hand, above
