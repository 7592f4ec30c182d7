"""Unit tests of the demo data generator (pandas/numpy/sklearn only, no Spark)."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import pathlib
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from lakeforge.demo.generator import CHANNELS, DemoSpec, generate_demo

START = dt.date(2026, 5, 1)
SMALL = DemoSpec(seed=7, customers=300, stores=5, days=40, start_date=START,
                 shift_date=START + dt.timedelta(days=25),
                 column_added_date=START + dt.timedelta(days=15))
# Big enough for a stable churn model; the shift comes after the as-of date + label window.
LEARN = DemoSpec(seed=11, customers=2000, stores=10, days=120, start_date=START,
                 shift_date=START + dt.timedelta(days=100),
                 column_added_date=START + dt.timedelta(days=50))


@dataclass
class ParsedOrders:
    """Every order line re-read independently of the generator's own bookkeeping."""

    lines: int = 0
    malformed: int = 0
    null_customer: int = 0
    null_amount: int = 0
    duplicates: int = 0
    late: int = 0
    promo_key: int = 0
    valid: list = field(default_factory=list)          # (file_date, record) of valid lines
    raw: list = field(default_factory=list)            # (file_date, line text) of every line


def parse_orders(landing: pathlib.Path) -> ParsedOrders:
    """Parse every order file line by line with json, in file order, and count the dirt."""
    out = ParsedOrders()
    seen: set[str] = set()
    for path in sorted((landing / "orders").glob("orders_*.jsonl")):
        file_date = dt.date.fromisoformat(path.stem.removeprefix("orders_"))
        for line in path.read_text(encoding="utf-8").split("\n")[:-1]:
            out.lines += 1
            out.raw.append((file_date, line))
            try:
                record = json.loads(line)
            except ValueError:
                out.malformed += 1
                continue
            out.promo_key += "promo_code" in record
            if record["customer_id"] is None:
                out.null_customer += 1
                continue
            out.null_amount += record["amount"] is None
            if record["order_id"] in seen:
                out.duplicates += 1
            else:
                seen.add(record["order_id"])
                out.late += dt.date.fromisoformat(record["order_ts"][:10]) < file_date
            out.valid.append((file_date, record))
    return out


def orders_frame(parsed: ParsedOrders) -> pd.DataFrame:
    """Valid, de-duplicated orders as a DataFrame with a parsed timestamp."""
    frame = pd.DataFrame([r for _, r in parsed.valid]).drop_duplicates("order_id")
    frame["ts"] = pd.to_datetime(frame["order_ts"], format="%Y-%m-%dT%H:%M:%S")
    frame["date"] = frame["ts"].dt.normalize()
    return frame


def customers_latest(landing: pathlib.Path) -> pd.DataFrame:
    """Latest version of every customer across the snapshot and incremental files."""
    files = sorted((landing / "customers").glob("customers_*.csv"))
    frame = pd.concat([pd.read_csv(f, dtype=str) for f in files], ignore_index=True)
    return frame.sort_values("updated_at").drop_duplicates("customer_id", keep="last")


def tree_bytes(root: pathlib.Path) -> dict[str, bytes]:
    """Relative path -> content of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    landing = tmp_path_factory.mktemp("small")
    return landing, generate_demo(landing, SMALL)


@pytest.fixture(scope="module")
def learn(tmp_path_factory):
    landing = tmp_path_factory.mktemp("learn")
    return landing, generate_demo(landing, LEARN), parse_orders(landing)


def test_deterministic_and_seed_sensitive(small, tmp_path):
    landing, manifest = small
    again = generate_demo(tmp_path / "again", SMALL)
    assert again == manifest
    assert tree_bytes(tmp_path / "again") == tree_bytes(landing)
    other = tmp_path / "other"
    generate_demo(other, dataclasses.replace(SMALL, seed=SMALL.seed + 1))
    assert (other / "orders/orders_2026-05-01.jsonl").read_bytes() != (
        landing / "orders/orders_2026-05-01.jsonl").read_bytes()


def test_rerun_replaces_only_owned_sources(tmp_path):
    spec = DemoSpec(seed=3, customers=50, stores=4, days=10)
    (tmp_path / "orders").mkdir()
    (tmp_path / "orders" / "stale.jsonl").write_text("{}\n")
    (tmp_path / "other_source").mkdir()
    (tmp_path / "other_source" / "keep.txt").write_text("keep")
    first = generate_demo(tmp_path, spec)
    snapshot = tree_bytes(tmp_path)
    assert not (tmp_path / "orders" / "stale.jsonl").exists()
    assert (tmp_path / "other_source" / "keep.txt").read_text() == "keep"
    assert generate_demo(tmp_path, spec) == first
    assert tree_bytes(tmp_path) == snapshot


def test_file_layout_and_formats(small):
    landing, manifest = small
    assert json.loads((landing / "_manifest.json").read_text()) == manifest
    assert manifest["end_date"] == "2026-06-09"
    with open(landing / "stores/stores.csv", newline="") as fh:
        stores = list(csv.DictReader(fh))
    assert list(stores[0]) == ["store_id", "region", "city", "opened_date", "has_drive_thru", "seats"]
    assert [s["store_id"] for s in stores] == ["S001", "S002", "S003", "S004", "S005"]
    assert {s["region"] for s in stores} <= {"north", "south", "east", "west"}
    assert all(dt.date.fromisoformat(s["opened_date"]) < START for s in stores)
    assert {s["has_drive_thru"] for s in stores} <= {"true", "false"}
    assert manifest["stores"] == {"files": 1, "rows": 5}

    customer_files = sorted((landing / "customers").glob("*.csv"))
    assert [f.name for f in customer_files] == [
        f"customers_{START + dt.timedelta(days=7 * k)}.csv" for k in range(6)]
    header = customer_files[0].read_text().split("\n")[0]
    assert header == "customer_id,signup_date,region,home_store_id,loyalty_member,birth_year,updated_at"
    first = pd.read_csv(customer_files[0], dtype=str)
    assert (first["signup_date"] < str(START)).all()
    assert 0.6 < len(first) / SMALL.customers < 0.8
    all_rows = pd.concat([pd.read_csv(f, dtype=str) for f in customer_files])
    assert manifest["customers"] == {"files": 6, "rows": len(all_rows),
                                     "distinct_customers": SMALL.customers}
    assert all_rows["customer_id"].str.fullmatch(r"C\d{6}").all()
    assert all_rows["updated_at"].str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").all()
    assert set(all_rows["loyalty_member"]) <= {"true", "false"}
    # Each weekly file holds the signups of the previous 7 days plus updates of known customers.
    known = set(first["customer_id"])
    for k, path in enumerate(customer_files[1:], start=1):
        part = pd.read_csv(path, dtype=str)
        week = (str(START + dt.timedelta(days=7 * (k - 1))), str(START + dt.timedelta(days=7 * k)))
        new = ~part["customer_id"].isin(known)
        assert part.loc[new, "signup_date"].between(week[0], week[1], inclusive="left").all()
        assert part["updated_at"].between(week[0], week[1], inclusive="left").all()
        known |= set(part["customer_id"])
    versions = all_rows.sort_values("updated_at").groupby("customer_id")["updated_at"]
    assert (versions.nunique() == versions.size()).all()

    order_files = sorted((landing / "orders").glob("*.jsonl"))
    assert [f.name for f in order_files] == [
        f"orders_{START + dt.timedelta(days=d)}.jsonl" for d in range(SMALL.days)]
    record = json.loads(order_files[0].read_text().split("\n")[0])
    assert list(record) == ["order_id", "customer_id", "store_id", "order_ts", "channel", "items",
                            "amount"]


def test_manifest_accounting_is_exact(small):
    landing, manifest = small
    parsed = parse_orders(landing)
    expected = {
        "files": SMALL.days,
        "lines": parsed.lines,
        "malformed_lines": parsed.malformed,
        "null_customer_id": parsed.null_customer,
        "null_amount": parsed.null_amount,
        "duplicate_lines": parsed.duplicates,
        "late_lines": parsed.late,
        "valid_lines": parsed.lines - parsed.malformed - parsed.null_customer,
        "distinct_valid_orders": len({r["order_id"] for _, r in parsed.valid}),
        "lines_with_promo_code_key": parsed.promo_key,
    }
    assert manifest["orders"] == expected
    assert len(parsed.valid) == expected["valid_lines"]


def test_dirt_kinds_present_and_disjoint(learn):
    _, manifest, parsed = learn
    counts = manifest["orders"]
    assert counts == {**counts, "malformed_lines": parsed.malformed, "duplicate_lines": parsed.duplicates,
                      "late_lines": parsed.late, "null_amount": parsed.null_amount,
                      "null_customer_id": parsed.null_customer}
    for key, rate in [("malformed_lines", 0.002), ("null_customer_id", 0.001), ("null_amount", 0.003),
                      ("duplicate_lines", 0.005), ("late_lines", 0.01)]:
        assert 0.3 * rate < counts[key] / counts["lines"] < 2.5 * rate, key
    # Duplicates are exact byte copies delivered in the same or the next file, never earlier.
    first_seen: dict[str, tuple[dt.date, str]] = {}
    raw_by_id = {}
    for file_date, line in parsed.raw:
        try:
            order_id = json.loads(line)["order_id"]
        except ValueError:
            continue
        if order_id in first_seen:
            orig_date, orig_line = first_seen[order_id]
            assert line == orig_line
            assert (file_date - orig_date).days in (0, 1)
        else:
            first_seen[order_id] = (file_date, line)
        raw_by_id.setdefault(order_id, []).append(line)
    # A duplicated or late order is never also null-keyed/null-amount (kinds are disjoint).
    for _, record in parsed.valid:
        if len(raw_by_id[record["order_id"]]) > 1:
            assert record["amount"] is not None
    # Malformed lines are truncated real order lines, and their order never appears intact.
    malformed = [line for _, line in parsed.raw if _fails(line)]
    assert len(malformed) == parsed.malformed
    assert all(line.startswith('{"') for line in malformed)
    lost = {line[13:23] for line in malformed if len(line) >= 24}
    assert lost and not lost & set(raw_by_id)


def _fails(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return True
    return False


def test_late_lines_stay_within_the_period(learn):
    _, manifest, parsed = learn
    last = dt.date.fromisoformat(manifest["end_date"])
    seen = set()
    late_delays = []
    for file_date, record in parsed.valid:
        assert file_date <= last
        if record["order_id"] in seen:
            continue
        seen.add(record["order_id"])
        delay = (file_date - dt.date.fromisoformat(record["order_ts"][:10])).days
        assert delay >= 0
        if delay:
            late_delays.append(delay)
    assert len(late_delays) == manifest["orders"]["late_lines"]
    assert set(late_delays) <= {1, 2, 3}


def test_promo_code_schema_change(small):
    landing, _ = small
    parsed = parse_orders(landing)
    added = SMALL.column_added_date
    with_code = 0
    for file_date, line in parsed.raw:
        if file_date < added:
            assert '"promo_code"' not in line
    for file_date, record in parsed.valid:
        if file_date >= added:
            assert "promo_code" in record
            with_code += record["promo_code"] is not None
            if record["promo_code"] is not None:
                assert record["promo_code"] in {"LOYAL10", "SUMMER", "APP5", "FRIES2"}
                assert record["order_ts"][:10] >= str(added)
    after = sum(1 for d, _ in parsed.valid if d >= added)
    assert 0.08 < with_code / after < 0.22


def test_orders_respect_signup_hours_and_domains(learn):
    landing, _, parsed = learn
    orders = orders_frame(parsed)
    customers = customers_latest(landing)
    signup = customers.set_index("customer_id")["signup_date"]
    assert orders["customer_id"].isin(signup.index).all()
    assert (orders["order_ts"].str[:10] >= orders["customer_id"].map(signup)).all()
    assert orders["ts"].dt.hour.between(7, 22).all()
    assert orders["order_id"].str.fullmatch(r"O\d{9}").all()
    assert set(orders["channel"]) == set(CHANNELS)
    assert (orders["items"] >= 1).all()
    amounts = orders["amount"].dropna()
    assert (amounts > 0).all() and (amounts.round(2) == amounts).all()
    # Most orders at the home store (home stores rarely change), the rest in the same region.
    home = customers.set_index("customer_id")["home_store_id"]
    assert 0.75 < (orders["store_id"] == orders["customer_id"].map(home)).mean() < 0.95
    stores = pd.read_csv(landing / "stores/stores.csv", dtype=str).set_index("store_id")["region"]
    region = customers.set_index("customer_id")["region"]
    assert (orders["store_id"].map(stores) == orders["customer_id"].map(region)).mean() > 0.98


def test_regime_shift_is_real(learn, small):
    for landing, spec in ((learn[0], LEARN), (small[0], SMALL)):
        orders = orders_frame(parse_orders(landing))
        shift = pd.Timestamp(spec.shift_date)
        before = orders[(orders["date"] >= shift - pd.Timedelta(days=14)) & (orders["date"] < shift)]
        after = orders[(orders["date"] >= shift) & (orders["date"] < shift + pd.Timedelta(days=14))]
        dine_before = (before["channel"] == "dine_in").mean()
        dine_after = (after["channel"] == "dine_in").mean()
        assert dine_after < 0.5 * dine_before
        assert (after["channel"] == "delivery").mean() > (before["channel"] == "delivery").mean()
        fee = lambda f: f.loc[f["channel"] == "delivery", "amount"].mean()  # noqa: E731
        assert fee(after) > fee(before)


def churn_dataset(orders: pd.DataFrame, customers: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Features as of a date and the label 'no order in the next 30 days' for active customers."""
    history = orders[orders["date"] < as_of]
    future = orders[(orders["date"] >= as_of) & (orders["date"] < as_of + pd.Timedelta(days=30))]
    by_customer = history.groupby("customer_id")
    recent = history[history["date"] >= as_of - pd.Timedelta(days=30)]
    frame = pd.DataFrame({
        "days_since_last": (as_of - by_customer["date"].max()).dt.days,
        "orders_total": by_customer.size(),
    })
    frame["orders_30d"] = recent.groupby("customer_id").size().reindex(frame.index, fill_value=0)
    loyalty = customers.set_index("customer_id")["loyalty_member"] == "true"
    frame["loyalty"] = loyalty.reindex(frame.index).astype(float)
    frame = frame[frame["days_since_last"] <= 60]            # active: ordered in the last 60 days
    frame["label"] = (~frame.index.isin(future["customer_id"])).astype(int)
    return frame


def test_churn_signal_is_learnable(learn):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    landing, _, parsed = learn
    orders = orders_frame(parsed)
    as_of = pd.Timestamp(LEARN.start_date + dt.timedelta(days=60))
    assert as_of + pd.Timedelta(days=30) <= pd.Timestamp(LEARN.shift_date)
    data = churn_dataset(orders, customers_latest(landing), as_of)
    assert len(data) > 500
    assert 0.15 < data["label"].mean() < 0.45
    features = np.log1p(data[["days_since_last", "orders_30d", "orders_total", "loyalty"]].to_numpy())
    train = np.random.default_rng(0).random(len(data)) < 0.6
    model = LogisticRegression(max_iter=1000).fit(features[train], data["label"][train])
    auc = roc_auc_score(data["label"][~train], model.predict_proba(features[~train])[:, 1])
    assert auc > 0.70


def test_clean_data_has_no_dirt(tmp_path):
    spec = dataclasses.replace(SMALL, dirty=False)
    counts = generate_demo(tmp_path, spec)["orders"]
    for key in ("malformed_lines", "null_customer_id", "null_amount", "duplicate_lines", "late_lines"):
        assert counts[key] == 0, key
    parsed = parse_orders(tmp_path)
    assert parsed.malformed == parsed.null_customer == parsed.null_amount == parsed.duplicates == 0
    assert parsed.late == 0
    assert counts["valid_lines"] == counts["distinct_valid_orders"] == counts["lines"]


def test_no_shift_and_no_column_change(tmp_path):
    spec = DemoSpec(seed=5, customers=200, stores=4, days=20, shift_date=None, column_added_date=None)
    manifest = generate_demo(tmp_path, spec)
    assert manifest["spec"]["shift_date"] is None
    assert manifest["orders"]["lines_with_promo_code_key"] == 0
    assert manifest["customers"]["files"] == 3


def test_spec_accepts_iso_strings():
    spec = DemoSpec(start_date="2026-05-01", shift_date="2026-09-01", column_added_date="2026-08-01")
    assert spec == DemoSpec()
    with pytest.raises(ValueError):
        DemoSpec(days=0)


def test_default_size_is_fast(tmp_path):
    started = time.perf_counter()
    manifest = generate_demo(tmp_path, DemoSpec())
    assert time.perf_counter() - started < 10
    assert manifest["customers"]["distinct_customers"] == 3000
    assert manifest["orders"]["files"] == 180
    assert manifest["spec"] == {"seed": 42, "customers": 3000, "stores": 20, "days": 180,
                                "start_date": "2026-05-01", "shift_date": "2026-09-01",
                                "column_added_date": "2026-08-01", "dirty": True}
