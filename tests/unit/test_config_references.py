"""Every cross-reference of a pipeline is checked before Spark starts: one mistake, one error (exit 2) naming the
file, the key and the valid choices. Each case runs the real CLI in a subprocess and checks that pyspark was never
imported (so no session, no JVM) and that the refusal took under a second."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_CONF = Path(__file__).resolve().parents[2] / "conf"
# Runs `lakeforge VERB ...` in-process and prints the exit code, the seconds main() took and whether pyspark (or
# anything that starts a JVM) was imported.
SCRIPT = ("import sys, time; from lakeforge import cli; started = time.monotonic(); code = cli.main(sys.argv[1:]); "
          "print(code, round(time.monotonic() - started, 3), "
          "sorted(m for m in ('pyspark', 'py4j', 'lakeforge.spark', 'lakeforge.stages') if m in sys.modules))")


@pytest.fixture
def conf(tmp_path) -> Path:
    shutil.copytree(REPO_CONF, tmp_path / "conf")
    return tmp_path / "conf"


def run_cli(conf: Path, *args: str) -> tuple[int, float, str, str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=60,
                          cwd=conf.parent, env={**os.environ, "LAKEFORGE_CONF_DIR": str(conf)})
    code, seconds, started = done.stdout.strip().split(" ", 2)
    return int(code), float(seconds), started, done.stderr


def edit(conf: Path, pipeline: str, old: str, new: str) -> Path:
    path = conf / "pipelines" / f"{pipeline}.yaml"
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not once in {path}"
    path.write_text(text.replace(old, new))
    return path


CHURN_SEGMENTS = "segments: [region, home_store_id, main_channel_90d]"
CHURN_WATCHED = "psi_features: [dine_in_share_4d, delivery_share_4d]"
CHURN_INPUTS = ("orders_30d, orders_90d, orders_180d, spend_90d, avg_amount, days_since_last_order, tenure_days, "
                "loyalty_member, delivery_share_90d, dine_in_share_90d, delivery_share_4d, dine_in_share_4d")
CUSTOMERS = "customer_id, signup_date, region, home_store_id, loyalty_member, birth_year, updated_at"
ORDERS = "order_id, customer_id, store_id, order_ts, channel, items, amount, promo_code"
DEMAND_TABLE = ("store_id, as_of_date, orders_1d, orders_7d, orders_28d, same_weekday_last_week, day_of_week, seats, "
                "has_drive_thru, delivery_share_7d")

# (pipeline, text in its YAML, replacement, the error after "<file>: ")
MISTAKES = {
    "pipeline source with no file": (
        "churn", "sources: [stores, customers, orders]", "sources: [stores, customer, orders]",
        r"unknown source 'customer': no file .*sources/customer\.yaml \(sources here: customers, deliveries, "
        r"orders, staffing, stores\)"),
    "spine source not listed": (
        "churn", "spine: {source: customers,", "spine: {source: deliveries,",
        r"churn\.yaml: key 'features\.spine\.source': source 'deliveries' is not in the pipeline's sources "
        r"\(stores, customers, orders\)"),
    "entity not a spine column": (
        "churn", "entity: customer_id", "entity: customer",
        rf"churn\.yaml: key 'features\.entity': 'customer' is not a column of source 'customers' \({CUSTOMERS}\)"),
    "entity not an events column": (
        "churn", "events: {source: orders, columns: [order_ts, channel, amount]",
        "events: {source: stores, columns: [opened_date]",
        r"churn\.yaml: key 'features\.entity': 'customer_id' is not a column of source 'stores' \(store_id, "),
    "spine since not a column": (
        "churn", "since: signup_date", "since: signed_up",
        rf"churn\.yaml: key 'features\.spine\.since': 'signed_up' is not a column of source 'customers' "
        rf"\({CUSTOMERS}\)"),
    "spine column not a column": (
        "churn", "columns: [loyalty_member]}", "columns: [loyalty]}",
        rf"churn\.yaml: key 'features\.spine\.columns': 'loyalty' is not a column of source 'customers' "
        rf"\({CUSTOMERS}\)"),
    "events source not listed": (
        "churn", "events: {source: orders,", "events: {source: deliveries,",
        r"churn\.yaml: key 'features\.events\.source': source 'deliveries' is not in the pipeline's sources "
        r"\(stores, customers, orders\)"),
    "events column not a column": (
        "churn", "columns: [order_ts, channel, amount]", "columns: [order_ts, channel, total]",
        rf"churn\.yaml: key 'features\.events\.columns': 'total' is not a column of source 'orders' \({ORDERS}\)"),
    "label events not listed": (
        "churn", "  events: orders\n  horizon_days: 30", "  events: deliveries\n  horizon_days: 30",
        r"churn\.yaml: key 'label\.events': source 'deliveries' is not in the pipeline's sources "
        r"\(stores, customers, orders\)"),
    "label events without the entity": (
        "churn", "  events: orders\n  horizon_days: 30", "  events: stores\n  horizon_days: 30",
        r"churn\.yaml: key 'label\.events': 'customer_id' is not a column of source 'stores' \(store_id, "),
    "segment typo": (
        "churn", CHURN_SEGMENTS, "segments: [regoin, home_store_id, main_channel_90d]",
        r"churn\.yaml: key 'monitoring\.segments': 'regoin' is not a column of the features table \(customer_id, "
        rf"as_of_date, .*, main_channel_90d\) or of source 'customers' \(monitoring\.segment_source\) "
        rf"\({CUSTOMERS}\)"),
    "segment source not listed": (
        "churn", "segment_source: customers", "segment_source: staffing",
        r"churn\.yaml: key 'monitoring\.segment_source': source 'staffing' is not in the pipeline's sources "
        r"\(stores, customers, orders\)"),
    "segment source not keyed by the entity": (
        "churn", "segment_source: customers", "segment_source: stores",
        r"churn\.yaml: key 'monitoring\.segment_source': 'customer_id' is not a column of source 'stores'"),
    "watched feature typo": (
        "churn", CHURN_WATCHED, "psi_features: [dine_in_share_4d, delivery_share_4]",
        rf"churn\.yaml: key 'retrain\.psi_features': 'delivery_share_4' is not a model input, so it has no drift "
        rf"to watch \(model inputs: {CHURN_INPUTS}\)"),
    "watched feature that is not a model input": (
        "churn", CHURN_WATCHED, "psi_features: [main_channel_90d]",
        r"churn\.yaml: key 'retrain\.psi_features': 'main_channel_90d' is not a model input"),
    "group key typo": (
        "demand", "group_key: store_id", "group_key: store",
        rf"demand\.yaml: key 'model\.group_key': 'store' is not a feature column \({DEMAND_TABLE}\)"),
    "spine and events from the same source, one column on both sides": (
        "churn", "spine: {source: customers, since: signup_date, columns: [loyalty_member]}",
        "spine: {source: orders, since: order_ts, columns: []}",
        r"churn\.yaml: key 'features\.events\.columns': the spine and the events are both source 'orders': column "
        r"'order_ts' would reach the function twice, as a spine column \(features\.spine\.since or columns: the "
        r"entity's latest row\) and as an event column \(each event in the lookback\); list it on one side only "
        r"\(events columns without it: \[channel, amount\]\)"),
    "feature function module typo": (
        "churn", "function: lakeforge.demo.churn.customer_activity", "function: lakeforge.demo.chrun.customer_activity",
        r"churn\.yaml: key 'features\.function': no module named 'lakeforge\.demo\.chrun'; name a module\.function"),
    "feature set function name typo": (
        "delivery_time", "function: lakeforge.demo.delivery.store_load", "function: lakeforge.demo.delivery.store_lod",
        r"delivery_time\.yaml: key 'features\.sets\.store_load\.function': module 'lakeforge\.demo\.delivery' "
        r"\(.*delivery\.py\) defines no 'store_lod' \(its functions: .*store_load.*\)"),
}


@pytest.mark.parametrize("pipeline, old, new, message", MISTAKES.values(), ids=MISTAKES.keys())
def test_each_mistake_is_one_error_before_spark_starts(conf, pipeline, old, new, message):
    edit(conf, pipeline, old, new)
    code, seconds, started, stderr = run_cli(conf, "ingest", "--pipeline", pipeline)
    assert (code, started) == (2, "[]"), stderr
    assert stderr.startswith("lakeforge ingest: error: "), stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert re.search(message, stderr), stderr
    assert seconds < 1.0, f"the refusal took {seconds}s"
    assert not (conf.parent / "spark-warehouse").exists() and not (conf.parent / "metastore_db").exists()


def test_every_shipped_pipeline_passes_the_checks(conf):
    from lakeforge import config

    for name in config.available_pipelines(conf):
        assert config.load_pipeline(name, None, conf).name == name


def test_pipeline_is_required_when_the_project_has_several(conf):
    code, seconds, started, stderr = run_cli(conf, "train")
    assert (code, started) == (2, "[]"), stderr
    assert stderr == (f"lakeforge train: error: --pipeline is required: this project has 3 pipelines (churn, "
                      f"delivery_time, demand; {conf / 'pipelines'}), e.g. --pipeline churn\n")


def test_the_only_pipeline_is_the_default(conf):
    from lakeforge import config

    (conf / "pipelines" / "churn.yaml").unlink()
    (conf / "pipelines" / "delivery_time.yaml").unlink()
    assert config.chosen_pipeline(None, conf) == "demand"
    assert config.chosen_pipeline("other", conf) == "other"
    edit(conf, "demand", "group_key: store_id", "group_key: store")  # proves the CLI loaded demand without being told
    code, seconds, started, stderr = run_cli(conf, "score")
    assert (code, started) == (2, "[]"), stderr
    assert stderr.startswith(f"lakeforge score: error: {conf / 'pipelines' / 'demand.yaml'}: key 'model.group_key': "
                             f"'store' is not a feature column"), stderr
