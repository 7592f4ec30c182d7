"""Event prediction points: point-in-time joins at timestamp precision, two time axes, labels from data,
parity pandas vs Spark, late data, a composite key end to end, and a night's cost independent of history."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import functions as F

from lakeforge import config, estimation, features, lake, points, registry, stages
from lakeforge.config import AS_OF_DATE, PREDICTION_AT
from lakeforge.ingest import ingest_all

import shipments  # tests/fixtures (pytest's pythonpath): the user's own module, known to no lakeforge code

T = pd.Timestamp


@pytest.fixture(scope="module")
def shipments_conf(user_conf) -> Path:
    """A conf folder with the repo's settings and the user's own source and pipeline (shipments)."""
    return user_conf({"shipments": shipments.SOURCE}, {"shipments": shipments.PIPELINE}, "shipments.py")


@pytest.fixture(scope="module")
def shipping(shipments_conf) -> config.Pipeline:
    return config.load_pipeline("shipments", None, shipments_conf)


def _bronze(rows: list[tuple]) -> pd.DataFrame:
    """Bronze rows of shipments: (store, no, carrier, sent, weight, arrived, late, ingested_at)."""
    frame = pd.DataFrame(rows, columns=["store_id", "shipment_no", "carrier_id", "sent_ts", "weight_kg",
                                        "arrived_ts", "late", "_ingested_at"])
    frame["shipment_no"] = frame["shipment_no"].astype("int32")
    frame["late"] = frame["late"].astype("int32")
    for c in ("sent_ts", "arrived_ts", "_ingested_at"):
        frame[c] = pd.to_datetime(frame[c], format="ISO8601")
    return frame.assign(_source_file=[f"f{i}.csv" for i in range(len(frame))])


BRONZE_SCHEMA = ("store_id string, shipment_no int, carrier_id string, sent_ts timestamp, weight_kg double, "
                 "arrived_ts timestamp, late int, _ingested_at timestamp, _source_file string")
POINT = T("2026-01-10 12:00:00")
BUILT = T("2026-01-11 00:00:00")  # when the point's date was first built: later rows are not seen


def _point(pipeline) -> pd.DataFrame:
    return pd.DataFrame({"store_id": ["S1"], "shipment_no": pd.Series([100], dtype="int32"),
                         AS_OF_DATE: [POINT.date()], PREDICTION_AT: [POINT], "carrier_id": ["K1"],
                         "weight_kg": [5.0], points.INGESTED_BY: [BUILT]})


def _both_engines(spark, pipeline, pts: pd.DataFrame, source: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    on_pandas = points.build_features_pandas(pts, {"shipments": source}, pipeline)
    on_spark = points.compute_features(spark.createDataFrame(pts),
                                       {"shipments": spark.createDataFrame(source, BRONZE_SCHEMA)},
                                       pipeline, buckets=2).toPandas()
    return on_pandas, on_spark


def test_a_point_sees_only_rows_before_its_instant_and_loaded_before_its_date_was_built(spark, shipping):
    source = _bronze([
        ("S1", 1, "K2", "2026-01-10 11:59:59", 1.0, None, 0, "2026-01-10 23:00"),  # seen: one second before
        ("S1", 100, "K2", "2026-01-10 12:00:00", 2.0, None, 0, "2026-01-10 23:00"),  # the point itself: not seen
        ("S1", 3, "K2", "2026-01-10 12:00:01", 4.0, None, 0, "2026-01-10 23:00"),  # one second after: not seen
        ("S1", 4, "K2", "2026-01-08 12:00:00", 8.0, None, 0, "2026-01-09 23:00"),  # window start: seen
        ("S1", 5, "K2", "2026-01-08 11:59:59", 16.0, None, 0, "2026-01-09 23:00"),  # before the window
        ("S1", 6, "K2", "2026-01-10 11:00:00", 32.0, None, 0, "2026-01-11 00:00:01"),  # loaded after the build
        ("S2", 7, "K2", "2026-01-10 11:30:00", 64.0, None, 0, "2026-01-10 23:00"),  # another store
        ("S1", 8, "K2", "2026-01-10 10:00:00", 128.0, None, 0, "2026-01-10 22:00"),  # a version seen ...
        ("S1", 8, "K2", "2026-01-10 10:00:00", 256.0, None, 0, "2026-01-12 09:00"),  # ... corrected later
    ])
    on_pandas, on_spark = _both_engines(spark, shipping, _point(shipping), source)
    pd.testing.assert_frame_equal(on_pandas, on_spark)
    row = on_spark.iloc[0]
    assert (row["store_shipments_2d"], row["store_weight_2d"]) == (3, 1.0 + 8.0 + 128.0)
    assert pd.isna(row["carrier_late_share_7d"])  # no row of carrier K1
    assert row[points.INGESTED_BY] == BUILT

    # One more row one second after the instant, and one loaded after the build: nothing changes.
    later = pd.concat([source, _bronze([("S1", 9, "K1", "2026-01-10 12:00:01", 512.0, None, 1, "2026-01-10 23:00"),
                                        ("S1", 10, "K1", "2026-01-10 09:00:00", 1024.0, "2026-01-10 10:00", 1,
                                         "2026-01-11 08:00")])], ignore_index=True)
    later["_source_file"] = [f"g{i}.csv" for i in range(len(later))]
    _, again = _both_engines(spark, shipping, _point(shipping), later)
    pd.testing.assert_frame_equal(again, on_spark)


def test_latest_as_of_keeps_the_newest_row_within_its_maximum_age(spark, shipping):
    latest = shipping.features.sets["store_recent"].model_copy(update={"latest": True, "window": dt.timedelta(hours=3)})
    pipeline = shipping.model_copy(update={"features": shipping.features.model_copy(
        update={"sets": {"store_recent": latest}})})
    source = _bronze([("S1", 1, "K2", "2026-01-10 08:59:59", 1.0, None, 0, "2026-01-10 09:00"),  # too old
                      ("S1", 2, "K2", "2026-01-10 10:00:00", 2.0, None, 0, "2026-01-10 10:00"),
                      ("S1", 3, "K2", "2026-01-10 11:30:00", 4.0, None, 0, "2026-01-10 11:30")])  # the latest
    on_pandas, on_spark = _both_engines(spark, pipeline, _point(pipeline), source)
    pd.testing.assert_frame_equal(on_pandas, on_spark)
    assert on_spark[["store_shipments_2d", "store_weight_2d"]].values.tolist() == [[1, 4.0]]
    old = source.iloc[:1]  # only the row older than the maximum age: the point gets nulls, not that row
    _, none = _both_engines(spark, pipeline, _point(pipeline), old)
    assert none[["store_shipments_2d", "store_weight_2d"]].values.tolist() == [[0, 0.0]]


def test_a_label_known_only_after_the_cutoff_keeps_its_row_out(spark, shipping):
    keys = pd.DataFrame({"store_id": ["S1", "S1"], "shipment_no": pd.Series([1, 2], dtype="int32"),
                         AS_OF_DATE: [dt.date(2026, 1, 10)] * 2,
                         PREDICTION_AT: [T("2026-01-10 08:00"), T("2026-01-10 09:00")]})
    rows = _bronze([("S1", 1, "K1", "2026-01-10 08:00", 1.0, "2026-01-10 16:00", 0, "2026-01-11 01:00"),
                    ("S1", 2, "K1", "2026-01-10 09:00", 1.0, "2026-01-11 15:00", 1, "2026-01-12 01:00")])
    cutoff = T("2026-01-11 00:00")
    on_pandas = points.data_labels_pandas(keys, rows, shipping, cutoff)
    on_spark = points.data_labels(spark.createDataFrame(keys), spark.createDataFrame(rows, BRONZE_SCHEMA), shipping,
                                  F.lit(cutoff.to_pydatetime()), buckets=2).toPandas()
    assert on_spark.values.tolist() == on_pandas.values.tolist() == [["S1", 1, dt.date(2026, 1, 10), 0]]
    later = points.data_labels_pandas(keys, rows, shipping, T("2026-01-12 00:00"))
    assert later["late"].tolist() == [0, 1]


# ---------------------------------------------------------------- the demo's delivery_time pipeline


@pytest.fixture(scope="module")
def delivery_lake(spark, settings_at, ingested_tiny, tiny_landing, tmp_path_factory):
    """The tiny demo with the delivery_time pipeline's sources ingested (orders, deliveries, staffing)."""
    work = tmp_path_factory.mktemp("delivery")
    landing = shutil.copytree(tiny_landing[0], work / "landing")  # this module adds a late file to its copy
    shutil.copytree(ingested_tiny, work / "lakehouse")
    lake.forget_tables(spark)
    settings = settings_at(landing, work / "lakehouse", work, work / "reports")
    pipeline = config.load_pipeline("delivery_time")
    stages.ingest(stages.Context(settings, pipeline, spark_factory=lambda _: spark))
    return settings, pipeline


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return frame.sort_values(keys, ignore_index=True)


@pytest.mark.slow
def test_delivery_time_features_and_labels_are_identical_on_pandas_and_spark(spark, delivery_lake):
    settings, pipeline = delivery_lake
    where = settings.paths.lakehouse
    last = features.event_date_range(spark, where, pipeline)[1]
    days = [last - dt.timedelta(days=n) for n in (30, 20, 10, 6, 3, 2, 1, 0)]
    built = spark.createDataFrame([(d, dt.datetime(2100, 1, 1)) for d in days],
                                  f"{AS_OF_DATE} date, {points.INGESTED_BY} timestamp")
    bronze = {name: lake.read(spark, where, f"bronze.{name}") for name in ("orders", "deliveries", "staffing")}
    pts = points.points(bronze["orders"], pipeline, days, built)
    pts_pandas = points.points_pandas(bronze["orders"].toPandas(), pipeline, days,
                                      built={d: pd.Timestamp("2100-01-01") for d in days})
    pd.testing.assert_frame_equal(_sorted(pts_pandas, ["order_id"]), _sorted(pts.toPandas(), ["order_id"]))
    on_spark = _sorted(points.compute_features(pts, bronze, pipeline, buckets=4).toPandas(), ["order_id"])
    on_pandas = _sorted(points.build_features_pandas(pts.toPandas(), {n: df.toPandas() for n, df in bronze.items()},
                                                     pipeline), ["order_id"])
    pd.testing.assert_frame_equal(on_pandas, on_spark)
    assert len(on_spark) == pts.count() > 20
    for name, fs in pipeline.features.sets.items():  # every set saw rows for some point
        assert on_spark[list(fs.output)].notna().any().all(), name
    assert on_spark["store_orders_1h"].gt(0).any() and on_spark["drivers_on_shift"].notna().all()

    deliveries = lake.read(spark, where, "silver.deliveries")
    cutoff = dt.datetime.combine(last + dt.timedelta(days=1), dt.time())
    labels_spark = _sorted(points.data_labels(pts, deliveries, pipeline, F.lit(cutoff), 4).toPandas(), ["order_id"])
    labels_pandas = _sorted(points.data_labels_pandas(pts.toPandas(), deliveries.toPandas(), pipeline, T(cutoff)),
                            ["order_id"])
    pd.testing.assert_frame_equal(labels_pandas, labels_spark)
    assert len(labels_spark) > 0 and labels_spark["minutes_to_deliver"].gt(0).all()


@pytest.mark.slow
def test_a_late_row_changes_no_built_date_and_reaches_the_next(spark, delivery_lake, tmp_path):
    settings, pipeline = delivery_lake
    where = settings.paths.lakehouse
    ctx = stages.Context(settings, pipeline, spark_factory=lambda _: spark)
    last = features.event_date_range(spark, where, pipeline)[1]
    day, next_day = last - dt.timedelta(days=6), last - dt.timedelta(days=5)
    stages.build_features(ctx, [day])
    table = features.features_table(pipeline)
    before = _sorted(lake.read(spark, where, table).where(F.col(AS_OF_DATE) == day).toPandas(), ["order_id"])
    versions = {t: lake.version(spark, where, t) for t in (table, "silver.deliveries")}
    training_before = _sorted(features.read_training_set(spark, where, pipeline, [day], versions).toPandas(),
                              ["order_id"])
    nxt = _sorted(features.build_features(spark, where, pipeline, [next_day]).toPandas(), ["order_id"])
    customer = nxt["customer_id"].iloc[0]

    # A delivery of the day, delivered before any of its points, arrives after the day was built.
    late_ts = f"{day} 06:00:00"
    folder = settings.paths.landing / "deliveries"
    late_file = folder / "deliveries_late.csv"
    late_file.write_text(f"order_id,customer_id,store_id,dispatched_ts,delivered_ts\n"
                         f"OLATE0001,{customer},S001,{day} 05:50:00,{late_ts}\n")
    try:
        stages.ingest(ctx)
    finally:
        late_file.unlink()
    stages.build_features(ctx, [day])  # a rerun of the built date
    after = _sorted(lake.read(spark, where, table).where(F.col(AS_OF_DATE) == day).toPandas(), ["order_id"])
    pd.testing.assert_frame_equal(after, before)
    versions = {t: lake.version(spark, where, t) for t in (table, "silver.deliveries")}
    training_after = _sorted(features.read_training_set(spark, where, pipeline, [day], versions).toPandas(),
                             ["order_id"])
    pd.testing.assert_frame_equal(training_after, training_before)

    seen = _sorted(features.build_features(spark, where, pipeline, [next_day]).toPandas(), ["order_id"])
    changed = seen["customer_deliveries_90d"] - nxt["customer_deliveries_90d"]
    assert changed.tolist() == [int(c == customer) for c in nxt["customer_id"]]


# ---------------------------------------------------------------- the user's own problem, end to end


def _settings(conf: Path, where: Path):
    return config.load_settings("test", [f"paths.landing={where / 'landing'}",
                                         f"paths.lakehouse={where / 'lakehouse'}",
                                         f"paths.reports={where / 'reports'}",
                                         f"paths.model_cache={where / 'model_cache'}",
                                         f"mlflow.tracking_uri=sqlite:///{where / 'mlflow.db'}",
                                         f"mlflow.artifact_root={where / 'mlartifacts'}"], directory=conf)


@pytest.mark.slow
def test_a_composite_key_and_two_sets_joined_by_different_keys_train_and_score(spark, shipments_conf, shipping,
                                                                              tmp_path):
    settings = _settings(shipments_conf, tmp_path)
    shipments.generate(settings.paths.landing / "shipments", days=30)
    lake.forget_tables(spark)
    ctx = stages.Context(settings, shipping, spark_factory=lambda _: spark)
    stages.ingest(ctx)
    trained = stages.train(ctx)
    assert trained["alias"] == "champion" and trained["auc"] > 0.65  # the carrier's record predicts lateness

    where = settings.paths.lakehouse
    rows = lake.read(spark, where, "silver.shipments").toPandas()
    train_dates = trained["train_dates"].split("..")
    holdout_start = dt.date.fromisoformat(trained["holdout_dates"].split("..")[0])
    table = features.features_table(shipping)
    versions = {t: lake.version(spark, where, t) for t in (table, "silver.shipments")}
    dates = [dt.date.fromisoformat(train_dates[0]) + dt.timedelta(days=n) for n in range(3)]
    training = features.read_training_set(spark, where, shipping, dates, versions, [holdout_start],
                                          holdout_start).toPandas()
    expected = rows.merge(training[["store_id", "shipment_no"]], on=["store_id", "shipment_no"])
    assert _sorted(training, ["store_id", "shipment_no"])["late"].tolist() == \
        _sorted(expected, ["store_id", "shipment_no"])["late"].tolist()
    assert len(training) == int((pd.to_datetime(rows["sent_ts"]).dt.date.isin(dates)).sum())

    model = registry.load_python_model("shipments", trained["version"])
    assert model.feature_names == ["weight_kg", "store_shipments_2d", "store_weight_2d", "carrier_late_share_7d"]
    last = features.event_date_range(spark, where, shipping)[1]
    scored = stages.score(ctx, last)
    predictions = lake.read(spark, where, "gold.shipments_predictions").toPandas()
    assert scored["rows"] == len(predictions) == 24
    assert sorted(predictions.columns[:3]) == sorted(["store_id", "shipment_no", PREDICTION_AT])
    sent_last = rows[pd.to_datetime(rows["sent_ts"]).dt.date == last]
    assert set(zip(predictions["store_id"], predictions["shipment_no"])) == \
        set(zip(sent_last["store_id"], sent_last["shipment_no"]))

    # A late row for the scored date (a heavy shipment of S1 sent at 00:00:01, before every point of the day):
    # the date's features, training rows and predictions stay as they were.
    features_before = _sorted(lake.read(spark, where, table).where(F.col(AS_OF_DATE) == last).toPandas(),
                              ["store_id", "shipment_no"])
    (settings.paths.landing / "shipments" / "shipments_late.csv").write_text(
        "store_id,shipment_no,carrier_id,sent_ts,weight_kg,arrived_ts,late\n"
        f"S1,1,K1,{last} 00:00:01,999.0,{last} 08:00:01,0\n")
    stages.ingest(ctx)
    stages.build_features(ctx, [last])
    assert_same = pd.testing.assert_frame_equal
    assert_same(_sorted(lake.read(spark, where, table).where(F.col(AS_OF_DATE) == last).toPandas(),
                        ["store_id", "shipment_no"]), features_before)
    assert_same(_sorted(features.read_training_set(spark, where, shipping, dates, {
        t: lake.version(spark, where, t) for t in (table, "silver.shipments")}, [holdout_start], holdout_start)
        .toPandas(), ["store_id", "shipment_no"]), _sorted(training, ["store_id", "shipment_no"]))
    stages.score(ctx, last)
    rescored = lake.read(spark, where, "gold.shipments_predictions").toPandas()
    keys = ["store_id", "shipment_no"]
    assert_same(_sorted(rescored, keys)[[*keys, "prediction"]], _sorted(predictions, keys)[[*keys, "prediction"]])
    # The next date would see it: the late row is in bronze, ingested after the scored date was built.
    assert (lake.read(spark, where, "bronze.shipments").where("weight_kg = 999.0").count()) == 1


@pytest.mark.slow
def test_a_nights_work_does_not_grow_with_history(spark, shipping, tmp_path):
    """The points, the source rows read and the rows given to each function for one night: the same with 30 and
    300 nights of history (the source's read is limited to the night's longest window)."""
    night = dt.date(2026, 1, 30)

    def work_of_one_night(days: int) -> dict[str, int]:
        where = tmp_path / f"h{days}"
        shipments.generate(where / "landing" / "shipments", days=days, start=night - dt.timedelta(days=days - 1))
        lake.forget_tables(spark)
        ingest_all(spark, {"shipments": shipping.sources["shipments"]}, where / "landing", where / "lakehouse",
                   owner="test", log=lambda *a, **k: None)
        built = spark.createDataFrame([], f"{AS_OF_DATE} date, {points.INGESTED_BY} timestamp")
        pts = points.points(lake.read(spark, where / "lakehouse", "silver.shipments"), shipping, [night], built)
        sources = points.set_sources(spark, where / "lakehouse", shipping, [night])
        work = {"points": pts.count(), "source rows read": sources["shipments"].count()}
        for name, fs in shipping.features.sets.items():
            work[name] = points.set_rows(pts, sources["shipments"], shipping, fs).count()
        return work

    short, long = work_of_one_night(30), work_of_one_night(300)
    assert short == long
    assert short["points"] == 24 and short["source rows read"] == 8 * 24  # the night and its 7-day window


@pytest.mark.slow
def test_snapshot_points_with_a_composite_key_and_feature_sets_train_and_score(spark, shipments_conf, tmp_path):
    """Every (store, carrier) pair on every date (a composite entity), two sets joined by different keys: the same
    rows on pandas and Spark, labels from the rule over later events, then train and score."""
    (shipments_conf / "pipelines" / "pairs.yaml").write_text(shipments.PAIR_PIPELINE)
    pairs = config.load_pipeline("pairs", None, shipments_conf)
    assert pairs.keys == ["store_id", "carrier_id"] and not pairs.is_event
    settings = _settings(shipments_conf, tmp_path)
    shipments.generate(settings.paths.landing / "shipments", days=30)
    lake.forget_tables(spark)
    ctx = stages.Context(settings, pairs, spark_factory=lambda _: spark)
    stages.ingest(ctx)
    where = settings.paths.lakehouse

    days = [dt.date(2026, 1, d) for d in (9, 15, 22)]
    built = spark.createDataFrame([(d, dt.datetime(2100, 1, 1)) for d in days],
                                  f"{AS_OF_DATE} date, {points.INGESTED_BY} timestamp")
    spine = lake.read(spark, where, "bronze.shipments")
    pts = points.with_cutoffs(features.snapshot_points(spine, days, pairs), built)
    sources = points.set_sources(spark, where, pairs, days)
    keys = ["store_id", "carrier_id", AS_OF_DATE]
    on_spark = _sorted(points.compute_features(pts, sources, pairs, buckets=4).toPandas(), keys)
    pts_pandas = features.snapshot_points_pandas(spine.toPandas(), days, pairs).assign(
        **{points.INGESTED_BY: pd.Timestamp("2100-01-01")})
    on_pandas = _sorted(points.build_features_pandas(pts_pandas, {"shipments": sources["shipments"].toPandas()},
                                                     pairs), keys)
    pd.testing.assert_frame_equal(on_pandas, on_spark)
    assert len(on_spark) == 3 * 2 * 3  # 2 stores x 3 carriers, each known before every one of the 3 dates
    rows = spine.toPandas()
    sent = pd.to_datetime(rows["sent_ts"])
    day = pd.Timestamp("2026-01-22")
    first = on_spark[(on_spark["store_id"] == "S1") & (on_spark[AS_OF_DATE] == day.date())].iloc[0]
    assert first["store_shipments_2d"] == int(((rows["store_id"] == "S1") & (sent >= day - pd.Timedelta(days=2))
                                               & (sent < day)).sum())

    trained = stages.train(ctx)
    training = features.read_training_set(spark, where, pairs, days, {
        t: lake.version(spark, where, t) for t in (features.features_table(pairs), "silver.shipments")}).toPandas()
    expected = [int(((rows.store_id == s) & (rows.carrier_id == c) & (sent >= pd.Timestamp(d))
                     & (sent < pd.Timestamp(d) + pd.Timedelta(days=1))).sum())
                for s, c, d in zip(training.store_id, training.carrier_id, training[AS_OF_DATE])]
    assert training["shipments_next_day"].tolist() == expected and sum(expected) > 0
    last = features.event_date_range(spark, where, pairs)[1]
    stages.build_features(ctx, [last + dt.timedelta(days=1)])
    scored = stages.score(ctx, last + dt.timedelta(days=1))
    predictions = lake.read(spark, where, "gold.pairs_predictions").toPandas()
    assert scored["rows"] == len(predictions) == 6 and trained["version"] == 1
    assert sorted(zip(predictions.store_id, predictions.carrier_id)) == sorted(
        (s, c) for s in ("S1", "S2") for c in shipments.CARRIERS)


@pytest.mark.slow
def test_delivery_time_estimates_mae_before_labels_beside_the_realized(spark, delivery_lake):
    """DLE: the error model fitted on the holdout is stored with the baseline (LightGBM text and its SHA-256); a
    night's estimated MAE is its mean over that night's predictions, recorded beside the realized MAE once the
    labels are known (the next day)."""
    settings, pipeline = delivery_lake
    where = settings.paths.lakehouse
    ctx = stages.Context(settings, pipeline, spark_factory=lambda _: spark)
    version = stages.train(ctx)["version"]
    model = registry.load_baseline(ctx.mlflow, "delivery_time", version)["error_model"]
    assert (model["method"], model["format"]) == ("dle", "lightgbm-text")
    assert model["sha256"] == hashlib.sha256(model["model"].encode()).hexdigest()
    assert "day_of_week" in model["columns"] and "store_id" not in model["columns"]   # numeric model inputs only
    last = features.event_date_range(spark, where, pipeline)[1]
    stages.build_features(ctx, [last - dt.timedelta(days=n) for n in range(10)])
    built = lake.read(spark, where, features.features_table(pipeline)).groupBy(AS_OF_DATE).count().collect()
    night = max(r[AS_OF_DATE] for r in built if r[AS_OF_DATE] < last and r["count"] >= 2)  # the tiny demo: few a day
    next_night = night + dt.timedelta(days=1)
    stages.score(ctx, night)
    for day in (night, next_night):
        stages.monitor(ctx, day)

    m = lake.read(spark, where, "ops.monitoring").where(F.col("pipeline") == "delivery_time").toPandas()
    estimated = m[(m.kind == "estimated_performance") & (m.monitor_date == night)]
    scored = lake.read(spark, where, "gold.delivery_time_predictions").where(F.col("score_date") == night).toPandas()
    rows = lake.read(spark, where, features.features_table(pipeline)).where(F.col(AS_OF_DATE) == night).toPandas()
    tonight = scored[[*pipeline.keys, "prediction"]].merge(rows, on=pipeline.keys, how="inner")
    assert len(tonight) == len(scored) > 0
    expected = estimation.estimate_loss(model, tonight, tonight["prediction"])
    assert estimated[["metric", "rows"]].values.tolist() == [["mae", len(scored)]]
    assert estimated.value.iloc[0] == pytest.approx(expected, rel=1e-12)
    # No retrain policy: no margin, the threshold is the holdout's own estimate.
    assert estimated.threshold.iloc[0] == pytest.approx(model["holdout_estimate"]["mae"], rel=1e-12)
    assert estimated.detail.iloc[0].startswith("DLE: mean expected absolute error of tonight's predictions")
    # The next night, the realized MAE of the same score date (its labels are known a day later).
    realized = m[(m.kind == "performance") & (m.monitor_date == next_night) & (m.name == "overall")]
    assert realized[["metric", "window_end", "rows"]].values.tolist() == [["mae", night, len(scored)]]
    assert realized.value.iloc[0] > 0
    print(f"delivery_time {night}: estimated MAE {estimated.value.iloc[0]:.3f} (holdout's "
          f"{model['holdout_estimate']['mae']:.3f}), realized {realized.value.iloc[0]:.3f}")

