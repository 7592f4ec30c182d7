"""Pandas feature functions on Spark: parity with pandas, as-of semantics (no leakage), labels, idempotent
dates, one scan per backfill, schema errors, row-wise functions, and a user's new feature end to end."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from pyspark.sql import functions as F

from lakeforge import cli, config, features, lake, registry, stages, training
from lakeforge.errors import DataError
from lakeforge.ingest import ingest_all
from lakeforge.pandas_on_spark import (apply_grouped, apply_grouped_pandas, apply_rowwise, apply_rowwise_pandas,
                                       schema_of)

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
KEYS = ["customer_id", features.AS_OF]


@dataclass(frozen=True)
class Lake:
    landing: Path
    lakehouse: Path
    dates: list[dt.date]  # the churn training snapshots of the tiny demo (train + holdout)


@pytest.fixture(scope="module")
def churn_lake(spark, churn, tiny_landing, ingested_tiny, tmp_path_factory) -> Lake:
    """A copy of the tiny demo's ingested churn sources, shared by this module's tests (they add only gold tables)."""
    landing, _ = tiny_landing
    lakehouse = tmp_path_factory.mktemp("features") / "lakehouse"
    lake.forget_tables(spark)
    shutil.copytree(ingested_tiny, lakehouse)
    train_dates, holdout = training.snapshot_dates(*features.event_date_range(spark, lakehouse, churn), churn)
    return Lake(landing, lakehouse, train_dates + holdout)


def sorted_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(KEYS, ignore_index=True)


def tables(spark, where: Lake):
    return lake.read(spark, where.lakehouse, "bronze.customers"), lake.read(spark, where.lakehouse, "silver.orders")


def test_churn_features_are_identical_on_pandas_and_spark(spark, churn, churn_lake):
    spine, events = tables(spark, churn_lake)
    on_spark = features.build_features(spark, churn_lake.lakehouse, churn, churn_lake.dates).toPandas()
    on_pandas = features.build_features_pandas(spine.toPandas(), events.toPandas(), churn_lake.dates, churn)

    pd.testing.assert_frame_equal(sorted_rows(on_spark), sorted_rows(on_pandas), check_exact=True)
    assert not on_spark.duplicated(KEYS).any()
    assert set(on_spark[features.AS_OF]) == set(churn_lake.dates)
    assert on_spark["orders_90d"].gt(0).any() and on_spark["orders_90d"].eq(0).any()


def test_demand_features_are_identical_on_pandas_and_spark(spark, churn_lake):
    """The second pipeline's function (per store, from the stores spine and the same orders) both ways."""
    demand = config.load_pipeline("demand")
    ingest_all(spark, {"stores": demand.sources["stores"]}, churn_lake.landing, churn_lake.lakehouse, owner="test",
               log=lambda *a, **k: None)
    spine = lake.read(spark, churn_lake.lakehouse, "bronze.stores")
    _, events = tables(spark, churn_lake)
    on_spark = features.build_features(spark, churn_lake.lakehouse, demand, churn_lake.dates).toPandas()
    on_pandas = features.build_features_pandas(spine.toPandas(), events.toPandas(), churn_lake.dates, demand)

    keys = ["store_id", features.AS_OF]
    pd.testing.assert_frame_equal(on_spark.sort_values(keys, ignore_index=True),
                                  on_pandas.sort_values(keys, ignore_index=True), check_exact=True)
    assert not on_spark.duplicated(keys).any()
    assert set(on_spark[features.AS_OF]) == set(churn_lake.dates)
    assert on_spark["orders_1d"].gt(0).any() and set(on_spark["store_id"]) <= set(spine.toPandas()["store_id"])


def test_features_at_d_do_not_change_when_every_event_from_d_on_changes(spark, churn, churn_lake):
    spine, events = tables(spark, churn_lake)
    d = churn_lake.dates[len(churn_lake.dates) // 2]
    later = d + dt.timedelta(days=21)
    cutoff = F.lit(d).cast("timestamp")
    from_d = F.col("order_ts") >= cutoff
    # Delete half of the orders at or after d, change the rest, and add orders and customer versions stamped
    # exactly at d (the boundary belongs to the future).
    changed_events = (events.where(~from_d | (F.pmod(F.xxhash64("order_id"), F.lit(2)) == 0))
                      .withColumn("amount", F.when(from_d, F.col("amount") * 100).otherwise(F.col("amount")))
                      .withColumn("channel", F.when(from_d, F.lit("delivery")).otherwise(F.col("channel")))
                      .unionByName(events.limit(40).withColumn("order_id", F.concat(F.lit("X"), "order_id"))
                                   .withColumn("order_ts", cutoff)))
    changed_spine = (spine.withColumn("loyalty_member", F.when(F.col("updated_at") >= cutoff, ~F.col("loyalty_member"))
                                      .otherwise(F.col("loyalty_member")))
                     .unionByName(spine.withColumn("updated_at", cutoff)
                                  .withColumn("loyalty_member", ~F.col("loyalty_member"))))

    def on_spark(spine_history, orders):
        return sorted_rows(features.compute_features(spine_history, orders, [d, later], churn, 2).toPandas())

    before, after = on_spark(spine, events), on_spark(changed_spine, changed_events)
    at_d = before[features.AS_OF] == d
    pd.testing.assert_frame_equal(before[at_d], after[at_d], check_exact=True)
    assert not before[~at_d].reset_index(drop=True).equals(after[~at_d].reset_index(drop=True)), \
        "the changes must show at a later date, or this test proves nothing"

    on_pandas = sorted_rows(features.build_features_pandas(changed_spine.toPandas(), changed_events.toPandas(),
                                                           [d], churn))
    pd.testing.assert_frame_equal(on_pandas, before[at_d].reset_index(drop=True), check_exact=True)


def test_labels_see_only_the_horizon_window(spark, churn):
    d = dt.date(2026, 8, 3)
    horizon = dt.timedelta(days=churn.label.horizon_days)
    at = lambda day, seconds=0: dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=seconds)  # noqa: E731
    schema = "order_id string, customer_id string, order_ts timestamp"
    keys = spark.createDataFrame([(c, d) for c in ("A", "B", "C", "D")], f"customer_id string, {features.AS_OF} date")
    inside = [("1", "A", at(d)),                                 # the first instant of the window
              ("2", "C", at(d + horizon, -1))]                   # the last
    outside = [("3", "B", at(d, -1)),                            # just before it
               ("4", "B", at(d + horizon)),                      # just after it
               ("5", "D", at(d - dt.timedelta(days=3))), ("6", "D", at(d + horizon + dt.timedelta(days=3)))]
    expected = pd.DataFrame({"customer_id": ["A", "B", "C", "D"], features.AS_OF: [d] * 4,
                             "churned": pd.Series([0, 1, 0, 1], dtype="int32")})

    def labelled(orders):
        events = spark.createDataFrame(orders, schema)
        on_spark = sorted_rows(features.labels(events, keys, churn).toPandas())
        on_pandas = sorted_rows(features.labels_pandas(events.toPandas(), keys.toPandas(), churn))
        pd.testing.assert_frame_equal(on_spark, on_pandas, check_exact=True)
        return on_spark

    pd.testing.assert_frame_equal(labelled(inside + outside), expected)
    pd.testing.assert_frame_equal(labelled(inside), expected)      # events outside the window change nothing
    assert labelled(inside[1:] + outside)["churned"].tolist() == [1, 1, 0, 1]  # one inside does


def test_training_labels_come_from_the_label_events_not_the_feature_events(spark, churn_lake):
    """A label declared on other events than the features' (here: a customers-table update within 30 days, while
    the features read orders): the training set carries exactly that label."""
    pipeline = config.load_pipeline("churn", ["pipeline.label.events=customers"]).model_copy(
        update={"name": "customer_updates"})
    dates = churn_lake.dates[-2:]
    features.write_features(spark, features.build_features(spark, churn_lake.lakehouse, pipeline, dates),
                            churn_lake.lakehouse, pipeline, dates, owner="test")
    versions = {name: lake.version(spark, churn_lake.lakehouse, name)
                for name in (features.features_table(pipeline), "silver.customers")}
    got = sorted_rows(features.read_training_set(spark, churn_lake.lakehouse, pipeline, dates, versions)
                      .select(*KEYS, "churned").toPandas())

    updates = lake.read(spark, churn_lake.lakehouse, "silver.customers").select("customer_id", "updated_at").toPandas()
    population = features.in_population_pandas(
        lake.read(spark, churn_lake.lakehouse, features.features_table(pipeline)).toPandas(), pipeline)
    horizon = pd.Timedelta(days=30)
    updated = {(c, d) for c, t in zip(updates.customer_id, updates.updated_at) for d in dates
               if pd.Timestamp(d) <= t < pd.Timestamp(d) + horizon}
    expected = sorted_rows(population[KEYS].assign(churned=[
        0 if (c, d) in updated else 1 for c, d in zip(population.customer_id, population[features.AS_OF])]))
    pd.testing.assert_frame_equal(got, expected.astype({"churned": "int32"}), check_exact=True)
    assert 0 < got.churned.sum() < len(got)   # both label values occur, so the label column is not a constant
    # Monitoring labels scored rows (key, date, prediction) through the same join: the same label per row.
    scored = spark.createDataFrame(got[KEYS].assign(prediction=0.5))
    by_monitor = features.labelled(scored, lake.read(spark, churn_lake.lakehouse, "silver.customers"), pipeline)
    pd.testing.assert_frame_equal(sorted_rows(by_monitor.select(*KEYS, "churned").toPandas()), got)
    # The orders-based label gives other values to the same rows: the test tells the two sources apart.
    on_orders = config.load_pipeline("churn").model_copy(update={"name": pipeline.name})
    by_orders = features.training_set(lake.read(spark, churn_lake.lakehouse, features.features_table(pipeline)),
                                      lake.read(spark, churn_lake.lakehouse, "silver.orders"), on_orders)
    assert not sorted_rows(by_orders.select(*KEYS, "churned").toPandas()).equals(got)


def test_rebuilding_a_date_replaces_that_date_only(spark, churn, churn_lake):
    spine, events = tables(spark, churn_lake)
    d1, d2 = churn_lake.dates[-2:]
    features.write_features(spark, features.build_features(spark, churn_lake.lakehouse, churn, [d1, d2]),
                            churn_lake.lakehouse, churn, [d1, d2], owner="test")
    table = features.features_table(churn)
    before = sorted_rows(lake.read(spark, churn_lake.lakehouse, table).toPandas())

    without_orders = features.compute_features(spine, events.limit(0), [d2], churn, 2)
    features.write_features(spark, without_orders, churn_lake.lakehouse, churn, [d2], owner="test")
    after = sorted_rows(lake.read(spark, churn_lake.lakehouse, table).toPandas())

    at_d1 = lambda frame: frame[frame[features.AS_OF] == d1].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(at_d1(after), at_d1(before), check_exact=True)
    assert not after.duplicated(KEYS).any()
    assert after[KEYS].equals(before[KEYS])
    assert after.loc[after[features.AS_OF] == d2, "orders_180d"].eq(0).all()


def test_a_backfill_reads_the_events_once(spark, churn, churn_lake, capsys):
    dates = [churn_lake.dates[0] + dt.timedelta(days=i) for i in range(30)]
    capsys.readouterr()
    features.build_features(spark, churn_lake.lakehouse, churn, dates).explain(mode="formatted")
    plan = capsys.readouterr().out
    scans = [block for block in plan.split("\n\n") if block.lstrip().startswith("(") and "Scan parquet" in block]
    assert sum("silver/orders" in block for block in scans) == 1, plan
    assert sum("bronze/customers" in block for block in scans) == 1, plan


def test_an_output_that_breaks_its_schema_names_the_function_and_the_column(spark):
    rows = spark.createDataFrame([("a", 1.0), ("a", 2.5), ("b", 3.0)], "customer_id string, amount double")
    schema = schema_of([("customer_id", "string"), ("total", "bigint")])

    def half_totals(frame: pd.DataFrame) -> pd.DataFrame:
        return (frame.groupby("customer_id", as_index=False)["amount"].sum()
                .assign(total=lambda t: t["amount"] / 2).drop(columns="amount"))

    def with_extra(frame: pd.DataFrame) -> pd.DataFrame:
        return half_totals(frame).assign(total=1, note="x")

    message = r"half_totals: column 'total' is declared bigint but the function returned non-integer values"
    with pytest.raises(DataError, match=message):
        apply_grouped_pandas(rows.toPandas(), half_totals, schema)
    with pytest.raises(Exception, match=message) as raised:
        apply_grouped(rows, half_totals, "customer_id", schema, 2).collect()
    # Raised on a Python worker, wrapped by Spark: still the user's mistake, one line, exit 2 (not lakeforge failing).
    assert not isinstance(raised.value, DataError)
    code, line = cli._failure(raised.value)
    assert code == 2 and re.fullmatch(r"error: feature function \S*half_totals: column 'total' is declared bigint "
                                      r"but the function returned non-integer values.*", line), line
    with pytest.raises(DataError, match=r"with_extra returned column 'note', which its output schema does not "
                                        r"declare: add it to features.columns .*\(e.g. `note: string`\)"):
        apply_grouped_pandas(rows.toPandas(), with_extra, schema)


def test_a_call_takes_every_row_of_its_entity_dates_and_the_dates_of_one_span(spark):
    days = [dt.date(2026, 8, 1) + dt.timedelta(days=i) for i in range(10)]
    rows = spark.createDataFrame([(k, d, 1.0) for k in "abc" for d in days for _ in range(2)],
                                 f"customer_id string, {features.AS_OF} date, amount double")
    schema = schema_of([("customer_id", "string"), (features.AS_OF, "date"), ("rows", "bigint"),
                        ("dates_in_call", "bigint"), ("keys_in_call", "bigint")])

    def sizes(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.groupby(["customer_id", features.AS_OF], as_index=False).size().rename(columns={"size": "rows"})
        return out.assign(dates_in_call=frame[features.AS_OF].nunique(), keys_in_call=frame["customer_id"].nunique())

    def calls(span: int) -> list[tuple]:
        grouped = apply_grouped(rows, sizes, "customer_id", schema, 1, by_date=features.AS_OF, dates_per_call=span)
        return sorted(map(tuple, grouped.collect()))

    # Spans are of calendar days (days since 1970 // span), so a span may hold fewer of the dates than its length.
    span_of = Counter((d - dt.date(1970, 1, 1)).days // 4 for d in days)
    assert sorted(span_of.values()) == [2, 4, 4], "the dates must fill a whole span, or this test proves nothing"
    assert calls(1) == [(k, d, 2, 1, 3) for k in "abc" for d in days]
    assert calls(4) == [(k, d, 2, span_of[(d - dt.date(1970, 1, 1)).days // 4], 3) for k in "abc" for d in days]


def test_a_backfill_sizes_its_calls_by_the_spine_and_the_events_its_window_sees(spark, churn):
    d1, d2 = dt.date(2026, 8, 10), dt.date(2026, 8, 20)
    first = dt.datetime.combine(d1 - dt.timedelta(days=180), dt.time())  # churn looks 180 days back
    spine = spark.createDataFrame([("a",), ("b",), ("c",)], "customer_id string")
    inside = [("a", first + dt.timedelta(hours=5 * i)) for i in range(40)]
    outside = [("a", first - dt.timedelta(seconds=1)), ("b", dt.datetime(2026, 8, 20)), (None, dt.datetime(2026, 8, 1))]
    events = spark.createDataFrame(inside + outside, "customer_id string, order_ts timestamp")

    # 3 spine rows + 40 events x 180 days of lookback / 190 days of window = 3 + 38 (37.9 rounded up) rows a date,
    # in one bucket: 100,000 // 41 dates a call (one more event counted, or none rounded up, would change it).
    assert features.estimate_dates_per_call(spine, events, [d2, d1], churn, 1) == 2_439
    assert features.estimate_dates_per_call(spine, events, [d2], churn, 1) == 1


def test_a_rowwise_function_gives_the_same_rows_on_pandas_and_spark(spark):
    rows = spark.createDataFrame(
        [("a", dt.date(2026, 8, 1), dt.date(2025, 1, 1), True), ("b", dt.date(2026, 8, 1), None, None),
         ("c", dt.date(2026, 8, 8), dt.date(2026, 8, 7), False)],
        f"customer_id string, {features.AS_OF} date, signup_date date, loyalty_member boolean")
    schema = schema_of([("customer_id", "string"), (features.AS_OF, "date"), ("tenure_days", "bigint"),
                        ("member", "bigint")])

    def tenure(frame: pd.DataFrame) -> pd.DataFrame:
        days = (pd.to_datetime(frame[features.AS_OF]) - pd.to_datetime(frame["signup_date"])).dt.days
        return pd.DataFrame({"customer_id": frame["customer_id"], features.AS_OF: frame[features.AS_OF],
                             "tenure_days": days, "member": frame["loyalty_member"].eq(True).astype("int64")})

    on_spark = sorted_rows(apply_rowwise(rows, tenure, schema).toPandas())
    on_pandas = sorted_rows(apply_rowwise_pandas(rows.toPandas(), tenure, schema, inputs=rows.schema))
    pd.testing.assert_frame_equal(on_spark, on_pandas, check_exact=True)
    assert on_spark["tenure_days"].isna().tolist() == [False, True, False]
    with pytest.raises(DataError, match=r"row-wise function .*<locals>.<lambda> returned 1 rows for 3 input rows"):
        apply_rowwise_pandas(rows.toPandas(), lambda frame: tenure(frame).head(1), schema)


@pytest.mark.slow
def test_a_new_feature_reaches_training_and_scoring_without_changing_lakeforge(spark, churn_lake, tmp_path,
                                                                                monkeypatch):
    conf = tmp_path / "conf"
    (conf / "pipelines").mkdir(parents=True)
    for name in ("base.yaml", "test.yaml"):
        shutil.copy(REPO / "conf" / name, conf / name)
    shutil.copytree(REPO / "conf" / "sources", conf / "sources")
    pipeline_yaml = yaml.safe_load((REPO / "conf" / "pipelines" / "churn.yaml").read_text())
    pipeline_yaml["features"]["function"] = "custom_features.activity_with_basket_size"
    pipeline_yaml["features"]["events"]["columns"].append("items")
    pipeline_yaml["features"]["columns"]["avg_items_180d"] = "double"
    (conf / "pipelines" / "custom.yaml").write_text(yaml.safe_dump(pipeline_yaml, sort_keys=False))
    # The user's module must import on the driver and in the Python workers (separate processes).
    monkeypatch.syspath_prepend(str(FIXTURES))
    spark.sparkContext.addPyFile(str(FIXTURES / "custom_features.py"))
    settings = config.load_settings("test", [f"paths.landing={churn_lake.landing}",
                                             f"paths.lakehouse={churn_lake.lakehouse}",
                                             f"paths.reports={tmp_path / 'reports'}",
                                             f"paths.model_cache={tmp_path / 'model_cache'}",
                                             f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                                             f"mlflow.artifact_root={tmp_path / 'mlartifacts'}"], directory=conf)
    lake.forget_tables(spark)
    ctx = stages.Context(settings, config.load_pipeline("custom", directory=conf), spark_factory=lambda s: spark)

    trained = stages.train(ctx)
    score_date = features.event_date_range(spark, churn_lake.lakehouse, ctx.pipeline)[1] + dt.timedelta(days=1)
    stages.build_features(ctx, [score_date])
    scored = stages.score(ctx, score_date)

    model = registry.load_python_model("custom", trained["version"])
    assert "avg_items_180d" in model.feature_names
    signature = mlflow.models.get_model_info(f"models:/custom/{trained['version']}").signature
    assert "avg_items_180d" in signature.inputs.input_names()
    predictions = lake.read(spark, churn_lake.lakehouse, "gold.custom_predictions").where(
        F.col("score_date") == F.lit(score_date)).toPandas()
    assert len(predictions) == scored["rows"] > 0
    assert predictions["prediction"].between(0, 1).all()
    built = lake.read(spark, churn_lake.lakehouse, "gold.custom_features").where(
        F.col(features.AS_OF) == F.lit(score_date)).toPandas()
    assert built["avg_items_180d"].gt(0).any()
