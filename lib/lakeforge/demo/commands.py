"""The demo's part of the command line: `generate` (its options, help and one-line summary) and the landing files
it writes. lakeforge.cli calls these; nothing outside lakeforge.demo knows the demo's sources."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lakeforge import ownership
from lakeforge.config import Settings
from lakeforge.errors import DataError

GENERATE_DETAILS = ("Writes the demo's landing files (orders JSON lines with their dirt, customers and stores CSV) and\n"
                    "_manifest.json under paths.landing. The same seed and size give the same bytes.\n"
                    "example: lakeforge generate --customers 300 --days 90")
SIZE_OPTIONS = ("customers", "stores", "days", "seed")


def add_size_options(parser: argparse.ArgumentParser) -> None:
    """`--customers`, `--stores`, `--days`, `--seed`: the demo data's size (defaults from `demo:` in the settings)."""
    parser.add_argument("--customers", type=int, help="number of customers (default from conf: demo.customers)")
    parser.add_argument("--stores", type=int, help="number of stores (default: demo.stores)")
    parser.add_argument("--days", type=int, help="days of orders (default: demo.days)")
    parser.add_argument("--seed", type=int, help="random seed (default: demo.seed)")


def size_of(args: argparse.Namespace) -> dict:
    """The size options given on the command line (None: the setting's value)."""
    return {name: getattr(args, name) for name in SIZE_OPTIONS}


def generate(settings: Settings, **size) -> dict:
    """Write the demo landing files (deterministic for the seed) and return their manifest."""
    from lakeforge import ingest, lake  # Spark's modules: only once there is data to write
    from lakeforge.demo.generator import SOURCE_DIRS, DemoSpec, generate_demo

    demo = settings.demo.model_copy(update={k: v for k, v in size.items() if v is not None})
    spec = DemoSpec(seed=demo.seed, customers=demo.customers, stores=demo.stores, days=demo.days,
                    start_date=demo.start_date, shift_date=demo.shift_date,
                    column_added_date=demo.column_added_date, dirty=demo.dirty)
    landing = settings.paths.landing
    ownership.claim(settings, "paths.landing")
    # The generator replaces its source folders whole: only in a landing folder lakeforge made for this project.
    ownership.check_replace(settings, "paths.landing", [landing / name for name in SOURCE_DIRS], Path.cwd())
    manifest_path = landing / "_manifest.json"
    if manifest_path.is_file() and lake.exists(settings.paths.lakehouse, ingest.FILE_LEDGER):
        old = json.loads(manifest_path.read_text()).get("spec")
        current = {k: str(v) for k, v in spec.__dict__.items()}
        if old is not None and {k: str(v) for k, v in old.items()} != current:
            raise DataError(f"the landing files in {landing} were generated with another spec ({old}) and are "
                            f"already ingested; regenerating would change files the lakehouse has loaded. "
                            f"Start fresh with `lakeforge demo --fresh` (deletes the folders lakeforge made) or "
                            f"`make clean`.")
    return generate_demo(landing, spec)


def describe_landing(settings: Settings, manifest: dict) -> str:
    """What `generate` wrote, on one line."""
    orders = manifest["orders"]
    return (f"demo data in {settings.paths.landing}: {manifest['customers']['distinct_customers']:,} customers, "
            f"{manifest['stores']['rows']} stores, {orders['files']} order files ({orders['lines']:,} lines, "
            f"{orders['malformed_lines']} malformed, {orders['duplicate_lines']} duplicates, "
            f"{orders['late_lines']} late) up to {manifest['end_date']}")
