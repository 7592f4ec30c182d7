"""Source and expectation declarations: each mistake is one clear error naming the key (no Spark)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from lakeforge import config
from lakeforge.errors import ConfigError

REPO_CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture
def pipeline_with(tmp_path):
    """Load the churn pipeline with its orders source (conf/sources/orders.yaml) changed by a function of its dict."""
    shutil.copytree(REPO_CONF, tmp_path / "conf")
    path = tmp_path / "conf" / "sources" / "orders.yaml"
    original = yaml.safe_load(path.read_text())

    def load(change):
        tree = yaml.safe_load(yaml.safe_dump(original))
        change(tree)
        path.write_text(yaml.safe_dump(tree))
        return config.load_pipeline("churn", directory=tmp_path / "conf")

    return load


def test_the_demo_contracts_load_with_every_new_rule(pipeline_with):
    def add_rules(orders):
        orders["expectations"] += [
            {"rule": "unique", "column": "order_id", "action": "warn"},
            {"rule": "pattern", "column": "order_id", "pattern": "^O\\d{9}$", "action": "quarantine"},
            {"rule": "freshness", "max_age_hours": 36, "action": "warn"},
            {"rule": "min_rows", "min": 1, "action": "fail"},
            {"rule": "range", "column": "order_ts", "min": "2020-01-01", "action": "drop"}]
        orders["on_new_column"] = "fail"
        orders["options"] = {"timestampFormat": "yyyy-MM-dd'T'HH:mm:ss"}

    source = pipeline_with(add_rules).sources["orders"]
    assert [e.rule for e in source.expectations][-5:] == ["unique", "pattern", "freshness", "min_rows", "range"]
    assert source.on_new_column == "fail" and source.expectations[-2].min == 1


@pytest.mark.parametrize("change, message", [
    (lambda o: o["expectations"].append({"rule": "range", "column": "amount"}),
     "key 'expectations.4': rule range needs min, max or both"),
    (lambda o: o["expectations"].append({"rule": "min_rows", "min": 10, "action": "quarantine"}),
     "rule min_rows judges whole files: its action must be warn or fail, not quarantine"),
    (lambda o: o["expectations"].append({"rule": "accepted_values", "column": "channel", "values": ["a"], "max": 3}),
     "rule accepted_values does not use max"),
    (lambda o: o["expectations"].append({"rule": "pattern", "column": "channel"}),
     "rule pattern needs a pattern"),
    (lambda o: o["expectations"].append({"rule": "not_null", "column": "coupon"}),
     "expectations[4] (not_null): column 'coupon' is not declared"),
    (lambda o: o["expectations"].append({"rule": "range", "column": "order_ts", "max": 5}),
     "expectations[4] (range on order_ts, timestamp): min/max must be dates or times"),
    (lambda o: o["expectations"].append({"rule": "freshness", "column": "amount", "max_age_hours": 1,
                                         "action": "warn"}),
     "freshness needs a date or timestamp column; amount is double"),
    (lambda o: o["columns"].update({"items": "integr"}), "column items: unknown type 'integr'"),
    (lambda o: o["columns"].update({"promo code": "string"}), "column name 'promo code'"),
    (lambda o: o.update({"primary_key": ["id"]}), "primary_key ['id']: must be distinct declared columns"),
    (lambda o: o.update({"event_time": "ts"}), "event_time 'ts' is not a declared column"),
    (lambda o: o.update({"options": {"mode": "FAILFAST"}}), "options mode: set by lakeforge, not configurable"),
    (lambda o: o.update({"on_new_column": "ignore"}), "key 'on_new_column': input should be"),
])
def test_a_bad_source_is_one_error_naming_the_key(pipeline_with, change, message):
    with pytest.raises(ConfigError) as error:
        pipeline_with(change)
    assert message in str(error.value)
    assert "sources/orders.yaml" in str(error.value)


def test_max_quarantine_share_is_one_check_per_file_that_acts_or_fails(pipeline_with):
    from lakeforge import quality
    from lakeforge.errors import DataError

    acting = pipeline_with(lambda o: o.update(max_quarantine_share=0.2)).sources["orders"]
    counts = {"a.jsonl": quality.FileCounts(read=1096, kept=208, quarantined=888),
              "b.jsonl": quality.FileCounts(read=100, kept=80, quarantined=20)}
    checks = [r for r in quality.evaluate(counts, ["a.jsonl", "b.jsonl"], acting)
              if r.check == quality.QUARANTINE_SHARE]
    assert checks == [
        quality.CheckResult("a.jsonl", "quarantined share", "act", 1096, 888, False,
                            "81.0% of 1,096 rows quarantined, at most 20.0% allowed (max_quarantine_share)"),
        quality.CheckResult("b.jsonl", "quarantined share", "act", 100, 20, True,
                            "20.0% of 100 rows quarantined, at most 20.0% allowed (max_quarantine_share)")]
    quality.raise_on_failures(quality.evaluate(counts, ["a.jsonl"], acting), "orders")  # act: the load goes on
    failing = pipeline_with(lambda o: o.update(max_quarantine_share=0.2, on_quarantine_share="fail")).sources["orders"]
    with pytest.raises(DataError, match=r"'quarantined share' failed on 888 of 1,096 rows .*a.jsonl: 81.0%"):
        quality.raise_on_failures(quality.evaluate(counts, ["a.jsonl"], failing), "orders")


def test_calendar_features_must_be_feature_columns(tmp_path):
    shutil.copytree(REPO_CONF, tmp_path / "conf")
    path = tmp_path / "conf" / "pipelines" / "demand.yaml"
    path.write_text(path.read_text().replace("calendar_features: [day_of_week]", "calendar_features: [weekday]"))
    with pytest.raises(ConfigError, match=r"demand.yaml: key 'monitoring.calendar_features': 'weekday' is not a "
                                          r"feature column \(store_id, as_of_date, orders_1d"):
        config.load_pipeline("demand", directory=tmp_path / "conf")


@pytest.mark.parametrize("seasonal, message", [
    ("{orders_1d: weekday}", r"key 'monitoring.seasonal_features': 'weekday' is not a feature column"),
    ("{day_of_week: orders_1d}", r"key 'monitoring.seasonal_features': 'day_of_week' is also in "
                                 r"monitoring.calendar_features \(left out of drift\); keep it in one of them")])
def test_seasonal_features_and_their_periods_must_be_feature_columns(tmp_path, seasonal, message):
    shutil.copytree(REPO_CONF, tmp_path / "conf")
    path = tmp_path / "conf" / "pipelines" / "demand.yaml"
    text = path.read_text()
    assert "seasonal_features: {orders_1d: day_of_week, same_weekday_last_week: day_of_week}" in text
    path.write_text(text.replace("seasonal_features: {orders_1d: day_of_week, same_weekday_last_week: day_of_week}",
                                 f"seasonal_features: {seasonal}"))
    with pytest.raises(ConfigError, match=f"demand.yaml: {message}"):
        config.load_pipeline("demand", directory=tmp_path / "conf")
