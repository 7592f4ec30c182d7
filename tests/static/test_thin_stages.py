"""Thin stages: each function of lakeforge/stages.py calls one function of a domain module (a function handed over
as a callback, in a lambda, does not count), stages.py stays under 300 lines, and only the orchestration
modules (the CLI, the flow, the demo's run) import it, so no domain module depends on a stage."""

from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[2] / "lib" / "lakeforge"
STAGES = LIB / "stages.py"
# The names stages.py gives lakeforge's modules (`ingest as ingestion`, `features as feats`).
DOMAIN = {"access", "catalog", "feats", "flow", "ingestion", "interrupts", "lake", "locks", "logs", "many_models",
          "monitoring", "ownership", "quality", "registry", "report", "runs", "scoring", "training"}
ONE_CALL = {
    "_default_score_date": ["feats.next_score_date"],
    "ingest": ["ingestion.ingest_sources"],
    "maintain": ["ingestion.maintain_sources"],
    "maintenance_due": ["ingestion.maintenance_due"],
    "build_features": ["feats.build_table"],
    "train": ["training.train"],
    "score": ["scoring.score"],
    "monitor": ["monitoring.monitor"],
    "promote": ["registry.promote"],
    "nightly": ["flow.run_nightly"],
    "retrain": ["monitoring.retrain"],
    "status": ["runs.status"],
    "doctor": ["lake.doctor"],
}


def domain_calls(node: ast.AST) -> list[str]:
    """`module.function` of each call of a domain module's function under `node`, in source order, leaving out
    lambdas (a callback the domain function calls) and nested imports."""
    found = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Lambda):
            continue
        if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                and isinstance(child.func.value, ast.Name) and child.func.value.id in DOMAIN):
            found.append(f"{child.func.value.id}.{child.func.attr}")
        found.extend(domain_calls(child))
    return found


def test_every_stage_calls_one_function_of_its_domain_module():
    tree = ast.parse(STAGES.read_text())
    stages = {f.name: domain_calls(f) for f in tree.body if isinstance(f, ast.FunctionDef)}
    assert stages == ONE_CALL


def test_stages_py_is_under_300_lines():
    lines = len(STAGES.read_text().splitlines())
    assert lines < 300, f"{STAGES} has {lines} lines: move the rules into their domain modules"


def importers_of_stages() -> list[str]:
    found = []
    for path in sorted(LIB.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if "lakeforge.stages" in names:
                found.append(path.relative_to(LIB).as_posix())
                break
    return found


def test_only_the_orchestration_modules_import_the_stages():
    assert importers_of_stages() == ["cli.py", "demo/summary.py", "flow.py"]
