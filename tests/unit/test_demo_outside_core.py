"""The demo lives in lakeforge.demo: no other module of the library names a demo source, pipeline or column."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from lakeforge.config import AS_OF_DATE, PREDICTION_AT

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "lib" / "lakeforge"


def demo_names() -> set[str]:
    """Every source, pipeline and column name the demo's conf/ declares (sources' columns, features' outputs,
    labels), read from the files so that a new demo column is covered too."""
    names: set[str] = set()
    for path in (REPO / "conf" / "sources").glob("*.yaml"):
        names |= {path.stem, *yaml.safe_load(path.read_text())["columns"]}
    for path in (REPO / "conf" / "pipelines").glob("*.yaml"):
        tree = yaml.safe_load(path.read_text())
        features = tree["features"]
        names |= {path.stem, tree["label"]["name"], *features.get("columns", {}), *features.get("sets", {})}
        for feature_set in features.get("sets", {}).values():
            names |= set(feature_set["output"])
    return names - {AS_OF_DATE, PREDICTION_AT}  # lakeforge's own columns, which every pipeline has


def test_no_demo_name_in_the_library_outside_the_demo():
    names = demo_names()
    assert {"churn", "demand", "delivery_time", "orders", "customer_id", "store_orders_1h"} <= names
    # A name as a word, not as an attribute or method (`.items()` is Python's, not the orders' `items` column).
    word = re.compile(r"(?<![\w.])(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")(?!\w)")
    found = [f"{path.relative_to(REPO)}:{number}: {match[1]!r} in {line.strip()}"
             for path in sorted(CORE.rglob("*.py")) if "demo" not in path.relative_to(CORE).parts
             for number, line in enumerate(path.read_text().splitlines(), 1) for match in word.finditer(line)]
    assert found == [], "\n".join(found)
