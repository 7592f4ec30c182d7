"""Every table lakeforge writes, in one place: its name, layer, partitioning and catalog properties.

A name is `<layer>.<table>` (the public contract in ARCHITECTURE.md), one folder each under the lakehouse root;
a table's description, owner and source live in its Delta properties (`lakeforge.*`), which `lakeforge status`
shows. Modules name a table through this module, so a name or a description changes in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lakeforge.errors import ConfigError

LAYERS = ("bronze", "silver", "gold", "ops")
BRONZE, SILVER, GOLD, OPS = LAYERS

# One of each per lakehouse, shared by every pipeline.
RUNS = "ops.runs"
AUDIT = "ops.audit"
MONITORING = "ops.monitoring"
QUALITY = "ops.quality"
QUARANTINE = "ops.quarantine"
INGESTED_FILES = "ops.ingested_files"

AS_OF = "as_of_date"       # the features tables' partition column (a night's points are one partition)
SCORE_DATE = "score_date"  # the predictions tables' partition column
PROBABILITIES = "probabilities"  # a multiclass predictions table's {class: probability} column
LAKEFORGE = "lakeforge"    # owner and source of lakeforge's own ledgers
# The Delta table properties `lakeforge status` shows (lake.describe).
DESCRIPTION, OWNER, SOURCE = "lakeforge.description", "lakeforge.owner", "lakeforge.source"

# Pipeline and source names become part of table names (gold.<pipeline>_features) and lakehouse folders: a Spark
# identifier that needs no quoting and one folder name on every file system (no case-only differences).
NAME = re.compile(r"[a-z][a-z0-9_]*")


def checked_name(name: str, kind: str = "pipeline") -> str:
    """The pipeline's (or source's) name when it can name a table, else a ConfigError naming its file and the fix."""
    if not NAME.fullmatch(str(name)):
        raise ConfigError(f"{kind} name {name!r} cannot name a table: use lower-case letters, digits and _, "
                          f"starting with a letter (it becomes part of table names such as "
                          f"{'gold.<name>_features' if kind == 'pipeline' else 'silver.<name>'}); rename "
                          f"conf/{kind}s/{name}.yaml")
    return name


def bronze(source: str) -> str:
    """Every version of every row of a source, as landed, with the audit columns."""
    return f"{BRONZE}.{checked_name(source, 'source')}"


def silver(source: str) -> str:
    """A source's latest row per key (MERGEd)."""
    return f"{SILVER}.{checked_name(source, 'source')}"


def features(pipeline: str, version: str | None = None) -> str:
    """gold.<pipeline>_features, or an earlier feature version's kept table gold.<pipeline>_features_<version>."""
    name = f"{GOLD}.{checked_name(pipeline)}_features"
    return name if version is None else f"{name}_{version}"


def predictions(pipeline: str) -> str:
    """gold.<pipeline>_predictions, partitioned by score_date."""
    return f"{GOLD}.{checked_name(pipeline)}_predictions"


def models(pipeline: str) -> str:
    """gold.<pipeline>_models: a per-group pipeline's manifest, one row per group per model version."""
    return f"{GOLD}.{checked_name(pipeline)}_models"


@dataclass(frozen=True)
class Table:
    """What a table is created with: its name, partitioning and properties (owner: fixed, or the project's)."""

    name: str
    description: str
    source: str = LAKEFORGE
    partition_by: tuple[str, ...] = ()
    owner: str | None = None
    extra: tuple[tuple[str, str], ...] = ()  # more Delta table properties

    def properties(self, owner: str | None = None) -> dict[str, str]:
        """The table's Delta properties; `owner` is the project's `owner` setting where the table has none fixed."""
        return {DESCRIPTION: self.description, OWNER: self.owner if self.owner is not None else owner,
                SOURCE: self.source, **dict(self.extra)}

    def options(self, owner: str | None = None) -> dict:
        """Keyword arguments of lake.append / lake.replace_where that create the table."""
        return {"partition_by": list(self.partition_by) or None, "properties": self.properties(owner)}


RUNS_TABLE = Table(RUNS, "Every lakeforge job run, appended when it starts (running) and when it ends: inputs and "
                         "outputs with Delta versions, rows, duration, status, error", owner=LAKEFORGE)
AUDIT_TABLE = Table(AUDIT, "Every model alias change, approval, refusal and permission change: who, when, from, "
                           "to, why, the metrics seen, and whether intended, done or reconciled with the registry",
                    owner=LAKEFORGE)
MONITORING_TABLE = Table(MONITORING, "Drift, matured performance, quality trend and retrain decisions per pipeline "
                                     "and monitor date", source="lakeforge monitor")
QUALITY_TABLE = Table(QUALITY, "Data-contract results per landing file and check")
QUARANTINE_TABLE = Table(QUARANTINE, "Rows that broke a data contract, with the raw record and the reason")
INGESTED_FILES_TABLE = Table(INGESTED_FILES, "Landing files seen, once each: loaded (with their row accounting), "
                                             "files delivered twice, unreadable and refused entries")


def source_tables(source: str, description: str | None, landing_folder: str,
                  stats_columns: str) -> tuple[Table, Table]:
    """bronze.<source> and silver.<source>: described by the source's YAML, sourced from its landing folder, with
    Delta file statistics kept for `stats_columns` only."""
    text = description or f"{source} landing files"
    extra = (("delta.dataSkippingStatsColumns", stats_columns),)
    return (Table(bronze(source), text, landing_folder, extra=extra),
            Table(silver(source), text, landing_folder, extra=extra))


def features_table(pipeline: str, keys: list[str], functions: str, version: str | None = None) -> Table:
    """A pipeline's features: one row per key(s) per as-of date, partitioned by it; sourced from its functions."""
    return Table(features(pipeline, version), f"{pipeline} features, one row per {' and '.join(keys)} per {AS_OF}",
                 functions, (AS_OF,))


def predictions_table(pipeline: str) -> Table:
    """A pipeline's predictions by score date, written by its @champion."""
    return Table(predictions(pipeline), f"{pipeline} predictions by {SCORE_DATE}", f"models:/{pipeline}@champion",
                 (SCORE_DATE,))


def models_table(pipeline: str, group_key: str) -> Table:
    """A per-group pipeline's manifest of its registered model's groups."""
    return Table(models(pipeline), f"{pipeline}: one row per {group_key} per model version (rows, holdout metrics, "
                                   f"fallback used)", f"models:/{pipeline}")
