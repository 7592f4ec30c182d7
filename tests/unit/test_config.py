"""Configuration: layering, overrides and one clear error per mistake (no Spark)."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from lakeforge import config, features, metrics
from lakeforge.errors import ConfigError

REPO_CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture
def conf(tmp_path) -> Path:
    """A private copy of the repo's conf folder that a test may break."""
    shutil.copytree(REPO_CONF, tmp_path / "conf")
    return tmp_path / "conf"


def test_overlay_and_set_override_base(conf):
    settings = config.load_settings("test", ["spark.shuffle_partitions=3", "demo.shift_date=2026-10-01"], conf)
    assert settings.env == "test"
    assert settings.spark.master == "local[2]"          # from test.yaml
    assert settings.spark.shuffle_partitions == 3       # from --set, over test.yaml's 2
    assert settings.spark.app_name == "lakeforge"       # from base.yaml
    assert settings.demo.shift_date == dt.date(2026, 10, 1)
    assert settings.paths.lakehouse.is_absolute()
    assert settings.mlflow.tracking_uri == "sqlite:///" + str(Path("var/mlflow.db").resolve())


def test_env_comes_from_environment_variable(conf, monkeypatch):
    monkeypatch.setenv("LAKEFORGE_ENV", "cluster")
    assert config.load_settings(None, None, conf).spark.master == "spark://127.0.0.1:7077"


def test_settings_are_frozen(conf):
    settings = config.load_settings("test", None, conf)
    with pytest.raises(pydantic.ValidationError, match=r"master\n  Instance is frozen"):
        settings.spark.master = "local[1]"
    with pytest.raises(pydantic.ValidationError, match=r"log_format\n  Instance is frozen"):
        settings.log_format = "json"
    assert (settings.spark.master, settings.log_format) == ("local[2]", "text")


def test_missing_base_file_names_it(conf):
    (conf / "base.yaml").unlink()
    with pytest.raises(ConfigError, match=r"base configuration not found: .*conf/base\.yaml"):
        config.load_settings("test", None, conf)


def test_unknown_env_lists_the_known_ones(conf):
    known = ", ".join(config.available_envs(conf))
    assert {"cluster", "local", "test"} <= set(known.split(", "))
    with pytest.raises(ConfigError, match=rf"unknown environment 'prod'.*prod\.yaml.*environments here: {known};"):
        config.load_settings("prod", None, conf)


def test_unknown_key_names_file_key_and_known_keys(conf):
    (conf / "test.yaml").write_text("spark:\n  mastr: local[1]\n")
    with pytest.raises(ConfigError) as err:
        config.load_settings("test", None, conf)
    message = str(err.value)
    assert str(conf / "test.yaml") in message
    assert "unknown key 'spark.mastr'" in message
    assert "master" in message and "shuffle_partitions" in message


def test_wrong_type_names_file_key_and_expectation(conf):
    (conf / "test.yaml").write_text("spark:\n  shuffle_partitions: lots\n")
    with pytest.raises(ConfigError, match=r"test\.yaml: key 'spark\.shuffle_partitions': .*integer.*'lots'"):
        config.load_settings("test", None, conf)


def test_bad_set_override_is_blamed_on_set(conf):
    with pytest.raises(ConfigError, match=r"--set: unknown key 'spark\.cores'"):
        config.load_settings("test", ["spark.cores=4"], conf)
    with pytest.raises(ConfigError, match=r"expected key=value"):
        config.load_settings("test", ["spark.master"], conf)


def test_invalid_yaml_names_the_file(conf):
    (conf / "test.yaml").write_text("spark: [unclosed\n")
    with pytest.raises(ConfigError, match=r"test\.yaml: not valid YAML"):
        config.load_settings("test", None, conf)


def test_pipeline_loads_typed(conf):
    churn = config.load_pipeline("churn", None, conf)
    assert churn.name == "churn"
    assert churn.sources["orders"].primary_key == ["order_id"]
    assert churn.label.horizon_days == 30
    assert len(churn.config_hash()) == 12
    assert churn.config_hash() == config.load_pipeline("churn", None, conf).config_hash()


def test_pipeline_override_with_set(conf):
    churn = config.load_pipeline("churn", ["pipeline.label.horizon_days=14"], conf)
    assert churn.label.horizon_days == 14


def test_unknown_pipeline_lists_the_known_ones(conf):
    with pytest.raises(ConfigError, match=r"unknown pipeline 'fraud'.*fraud\.yaml.*pipelines here: churn"):
        config.load_pipeline("fraud", None, conf)


def test_pipeline_unknown_nested_key(conf):
    path = conf / "pipelines" / "churn.yaml"
    path.write_text(path.read_text().replace("horizon_days: 30", "horizon_days: 30\n  horizon_weeks: 4"))
    with pytest.raises(ConfigError, match=r"churn\.yaml: unknown key 'label\.horizon_weeks'.*horizon_days"):
        config.load_pipeline("churn", None, conf)


def test_source_bad_enum_value_names_the_source_file(conf):
    path = conf / "sources" / "orders.yaml"
    path.write_text(path.read_text().replace("format: json", "format: xml"))
    with pytest.raises(ConfigError, match=r"sources/orders\.yaml: key 'format': input should be 'csv', 'json' or 'parquet'"):
        config.load_pipeline("churn", None, conf)


def test_pipelines_share_one_declaration_of_a_source(conf):
    churn, demand = config.load_pipeline("churn", None, conf), config.load_pipeline("demand", None, conf)
    assert list(churn.sources) == ["stores", "customers", "orders"] and list(demand.sources) == ["stores", "orders"]
    assert churn.sources["orders"] == demand.sources["orders"] == config.load_source("orders", None, conf)
    # One override changes the source for every pipeline of the run.
    changed = config.load_pipeline("demand", ["sources.orders.on_new_column=fail"], conf)
    assert changed.sources["orders"].on_new_column == "fail"


def test_a_source_defined_inside_a_pipeline_is_refused(conf):
    path = conf / "pipelines" / "demand.yaml"
    path.write_text(path.read_text().replace("sources: [stores, orders]",
                                             "sources:\n  stores: {path: stores}\n  orders: {path: orders}"))
    with pytest.raises(ConfigError, match=r"demand\.yaml: key 'sources': sources are declared once for the project, "
                                          r"each in conf/sources/<name>\.yaml.*move stores, orders there.*"
                                          r"sources: \[stores, orders\]"):
        config.load_pipeline("demand", None, conf)


def test_unknown_source_name_lists_the_known_ones(conf):
    path = conf / "pipelines" / "demand.yaml"
    path.write_text(path.read_text().replace("sources: [stores, orders]", "sources: [stores, order]"))
    with pytest.raises(ConfigError, match=r"unknown source 'order': no file .*sources/order\.yaml "
                                          r"\(sources here: customers, deliveries, orders, staffing, stores\)"):
        config.load_pipeline("demand", None, conf)


@pytest.mark.parametrize("override, message", [
    ("pipeline.sources.orders.format=csv", r"a source is changed with --set sources\.<name>\.<key>=value"),
    ("sources.order.format=csv", r"--set sources\.order\.\.\.: pipeline demand has no source 'order' "
                                 r"\(its sources: stores, orders\)"),
])
def test_source_overrides_name_a_source_of_the_pipeline(conf, override, message):
    with pytest.raises(ConfigError, match=message):
        config.load_pipeline("demand", [override], conf)


def test_not_model_inputs_stay_out_of_the_model_inputs(conf):
    churn = config.load_pipeline("churn", None, conf)
    assert churn.features.not_model_inputs == ["main_channel_90d"]
    assert "main_channel_90d" in churn.features.columns
    assert "main_channel_90d" not in features.feature_columns(churn)
    assert "dine_in_share_4d" in features.feature_columns(churn)


def test_not_model_inputs_must_be_declared_output_columns(conf):
    path = conf / "pipelines" / "churn.yaml"
    path.write_text(path.read_text().replace("not_model_inputs: [main_channel_90d]", "not_model_inputs: [channel]"))
    with pytest.raises(ConfigError, match=r"churn\.yaml: .*not_model_inputs': 'channel' must be one of the declared "
                                          r"output columns other than customer_id and as_of_date"):
        config.load_pipeline("churn", None, conf)


def test_cli_reports_a_config_mistake_before_importing_the_stages(conf):
    """A typo in --env or --pipeline is reported without first importing MLflow and the model libraries (~4 s)."""
    script = ("import sys; from lakeforge import cli; code = cli.main(sys.argv[1:]); "
              "print(code, sorted(m for m in ('lakeforge.stages', 'mlflow', 'lightgbm') if m in sys.modules))")
    for args, message in ((["status", "--env", "prod"], "lakeforge status: error: unknown environment 'prod'"),
                          (["ingest", "--pipeline", "nosuch"], "lakeforge ingest: error: unknown pipeline 'nosuch'")):
        done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "LAKEFORGE_CONF_DIR": str(conf),
                               "PYTHONPATH": str(REPO_CONF.parent / "lib")})
        assert done.stdout.strip() == "2 []", done.stdout + done.stderr
        assert done.stderr.startswith(message), done.stderr


def test_jvm_options_in_the_settings_come_after_lakeforges_log_config(conf, monkeypatch):
    from lakeforge.spark import session_conf

    monkeypatch.setenv("LAKEFORGE_CONF_DIR", str(conf))
    log_config = f"-Dlog4j2.configurationFile={(conf / 'log4j2.properties').as_uri()}"
    assert session_conf(config.load_settings("local", None, conf))["spark.driver.extraJavaOptions"] == log_config
    tuned = config.load_settings("local", ["spark.conf={spark.driver.extraJavaOptions: -XX:+UseSerialGC}"], conf)
    assert session_conf(tuned)["spark.driver.extraJavaOptions"] == f"{log_config} -XX:+UseSerialGC"


def _delivery(conf, old: str, new: str):
    """Load delivery_time (event points, feature sets, a label from data) with one edit to its YAML."""
    path = conf / "pipelines" / "delivery_time.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return config.load_pipeline("delivery_time", None, conf)


def test_event_points_mistakes_are_one_error_naming_the_key(conf):
    cases = [
        ("columns: [store_id, customer_id, items]   # known at that moment",
         "columns: [store_id, customer_id, items]\n  known_later: [items]",
         r"key 'points\.columns': 'items' is known only after the instant"),
        ("join: {store_id: store_id}\n      window: 1h", "join: {region: store_id}\n      window: 1h",
         r"key 'features\.sets\.store_load\.join': 'region' is not a column of the point"),
        ("columns: [channel, items]", "columns: [channel, item_count]",
         r"key 'features\.sets\.store_load\.columns': 'item_count' is not a column of source 'orders'"),
        ("output: {drivers_on_shift: double,", "output: {store_orders_1h: double,",
         r"key 'features\.sets\.staffing\.output': column 'store_orders_1h' is also an output of set store_load"),
        ("  join: {order_id: order_id}\n  columns: [delivered_ts]", "  columns: [delivered_ts]",
         r"key 'label\.join': the label comes from 'deliveries', not the points' source"),
        ("  known_at: delivered_ts", "  known_at: store_id",
         r"key 'label\.known_at': 'store_id' of source 'deliveries' is string; a timestamp column is needed"),
    ]
    original = (conf / "pipelines" / "delivery_time.yaml").read_text()
    for old, new, message in cases:
        (conf / "pipelines" / "delivery_time.yaml").write_text(original)
        with pytest.raises(ConfigError, match=r"delivery_time\.yaml: " + message):
            _delivery(conf, old, new)


def test_a_window_is_a_duration():
    assert config.FeatureSet(source="s", join={"a": "a"}, window="90m", function="m.f",
                             output={"x": "double"}).window == dt.timedelta(minutes=90)
    with pytest.raises(pydantic.ValidationError, match=r"expected a duration such as 90d, 1h, 30m or 45s"):
        config.FeatureSet(source="s", join={"a": "a"}, window="1 week", function="m.f", output={"x": "double"})


def test_a_bad_duration_is_named_once_with_its_file_key_and_value(conf):
    with pytest.raises(ConfigError) as raised:
        config.load_pipeline("delivery_time", ["pipeline.features.sets.store_load.window=1 week"], conf)
    assert str(raised.value).endswith("--set: key 'features.sets.store_load.window': expected a duration such as "
                                      "90d, 1h, 30m or 45s (got '1 week')")


# ---------------------------------------------------------------- model.estimator, its params and metrics


@pytest.mark.parametrize("override, key, message", [
    ("pipeline.model.params.num_leaves=seven", "model.params.num_leaves", "expected an integer, got 'seven' (str)"),
    ("pipeline.model.params.learning_rate=true", "model.params.learning_rate", "expected a number, got True (bool)"),
    ("pipeline.model.search_space.num_leaves={type: choice, values: [7, 15.5]}", "model.search_space.num_leaves.values",
     "expected an integer, got 15.5 (float)"),
])
def test_a_known_parameter_of_the_wrong_type_names_the_file_and_key(conf, override, key, message):
    with pytest.raises(ConfigError, match=rf"churn.yaml: key '{re.escape(key)}': {re.escape(message)}$"):
        config.load_pipeline("churn", [override], conf)


@pytest.mark.parametrize("overrides, key, message", [
    (["pipeline.model.estimator=sklearn.ensemble.HistGradientBoostingClassifier"],  # churn's params are LightGBM's
     "model.params.n_estimators", "sklearn.ensemble.HistGradientBoostingClassifier takes no argument 'n_estimators' "
                                  "(it takes categorical_features, class_weight, "),
    (["pipeline.model.estimator=sklearn.ensemble.HistGradientBoostingClassifer"], "model.estimator",
     "module 'sklearn.ensemble' has no 'HistGradientBoostingClassifer'; "
     "did you mean 'sklearn.ensemble.HistGradientBoostingClassifier'?"),
    (["pipeline.model.estimator=sklearn.ensemble.Forest"], "model.estimator",  # no near name: no guess
     "module 'sklearn.ensemble' has no 'Forest' (the YAML names code to import"),
    (["pipeline.model.estimator=sklearn.utils.shuffle"], "model.estimator",
     "'sklearn.utils.shuffle' is not a class (function); model.estimator names an estimator class"),
    (["pipeline.model.estimator=sklearn.ensemble.HistGradientBoostingRegressor"], "model.estimator",
     "class 'sklearn.ensemble.HistGradientBoostingRegressor' has no predict_proba"),
    (["pipeline.model.estimator=no_such_package.Model"], "model.estimator", "cannot import module 'no_such_package'"),
    (["pipeline.model.estimator=os.system('x')"], "model.estimator", "is neither lightgbm, xgboost nor an import path"),
    (["pipeline.model.metric=mae"], "model.metric",
     "'mae' is not a classification metric; choose one of auc, log_loss, f1, accuracy, precision_at_k"),
    (["pipeline.model.distributed=true", "pipeline.model.estimator=xgboost"],
     "model.distributed", "the distributed learner is Spark MLlib's LogisticRegression"),
])
def test_estimator_and_metric_mistakes_are_one_error_naming_the_key(conf, overrides, key, message):
    with pytest.raises(ConfigError, match=rf"churn.yaml: key '{re.escape(key)}': .*{re.escape(message)}"):
        config.load_pipeline("churn", overrides, conf)


def test_a_multiclass_label_takes_its_metrics_and_refuses_per_group(conf):
    multiclass = ["pipeline.label.task=multiclass", "pipeline.model.metric=null"]
    with pytest.raises(ConfigError, match=r"delivery_time.yaml: key 'model.pattern': per_group models route one "
                                          r"number per row .* a multiclass label needs pattern: global$"):
        config.load_pipeline("delivery_time", [*multiclass, "pipeline.model.pattern=per_group",
                                               "pipeline.model.group_key=store_id"], conf)
    delivery = config.load_pipeline("delivery_time", ["pipeline.label.task=multiclass", "pipeline.model.metric=null"],
                                    conf)
    assert (delivery.label.task, delivery.model.metric) == ("multiclass", "log_loss")
    with pytest.raises(ConfigError, match=r"key 'model.metric': 'mae' is not a multiclass metric; choose one of "
                                          r"log_loss, accuracy, macro_f1, or declare your own under "
                                          r"model\.own_metrics$"):
        config.load_pipeline("delivery_time", ["pipeline.label.task=multiclass"], conf)


OWN = "pipeline.model.own_metrics.late_cost"


def test_a_teams_own_metric_is_declared_once_and_named_like_lakeforges(conf):
    churn = config.load_pipeline("churn", [f"{OWN}.function=parcels.late_cost", f"{OWN}.higher_is_better=false",
                                           "pipeline.model.metric=late_cost", "pipeline.model.tuning.metric=late_cost"],
                                 conf)
    assert (churn.model.metric, churn.model.tuning.metric) == ("late_cost", "late_cost")
    assert churn.model.own_metrics["late_cost"].function == "parcels.late_cost"
    assert metrics.is_own("late_cost") and not metrics.higher_is_better("late_cost")


@pytest.mark.parametrize("overrides, key, message", [
    ([f"{OWN}.function=parcels.no_such_cost", f"{OWN}.higher_is_better=false"], "model.own_metrics.late_cost.function",
     "module 'parcels' ("),
    (["pipeline.model.own_metrics.auc.function=parcels.late_cost",
      "pipeline.model.own_metrics.auc.higher_is_better=true"],
     "model.own_metrics.auc", "'auc' is lakeforge's own metric (area under the ROC curve); give yours another name"),
    (["pipeline.model.own_metrics.Cost.function=parcels.late_cost",
      "pipeline.model.own_metrics.Cost.higher_is_better=true"],
     "model.own_metrics.Cost", "a metric's name is lowercase letters, digits and _, starting with a letter"),
    (["pipeline.model.metric=late_cost"], "model.metric",
     "'late_cost' is not a classification metric; choose one of auc, log_loss, f1, accuracy, precision_at_k, or "
     "declare your own under model.own_metrics"),
])
def test_own_metric_mistakes_are_one_error_naming_the_key(conf, overrides, key, message):
    with pytest.raises(ConfigError, match=rf"churn.yaml: key '{re.escape(key)}': {re.escape(message)}"):
        config.load_pipeline("churn", overrides, conf)


def test_an_own_metric_declared_differently_by_two_pipelines_is_refused(conf):
    config.load_pipeline("churn", [f"{OWN}.function=parcels.late_cost", f"{OWN}.higher_is_better=false"], conf)
    with pytest.raises(ConfigError, match=r"key 'model.own_metrics.late_cost': metric 'late_cost' is already declared "
                                          r"by another pipeline as parcels.late_cost \(classification, "
                                          r"higher_is_better: false\); declare it alike or name it differently$"):
        config.load_pipeline("churn", [f"{OWN}.function=parcels.late_cost", f"{OWN}.higher_is_better=true"], conf)


def test_a_wrong_parameter_type_exits_2_from_the_cli_before_spark_starts(conf, tmp_path):
    done = subprocess.run([sys.executable, "-m", "lakeforge", "train", "--pipeline", "churn", "--env", "test",
                           "--set", "pipeline.model.params.n_estimators=many"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          env={**os.environ, "LAKEFORGE_CONF_DIR": str(conf),
                               "PYTHONPATH": str(REPO_CONF.parent / "lib")})
    assert done.returncode == 2
    assert "churn.yaml: key 'model.params.n_estimators': expected an integer, got 'many' (str)" in done.stderr
    assert "SparkSession" not in done.stderr and not (tmp_path / "spark-warehouse").exists()
