"""The two notebooks run top to bottom on tiny data, and Spark gives the pandas prototype's rows exactly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = [REPO / "notebooks" / "01_prototype_in_pandas.ipynb", REPO / "notebooks" / "02_same_code_on_spark.ipynb"]
KERNEL = "lakeforge-test"


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.spark
@pytest.mark.slow
def test_notebooks_run_and_spark_gives_the_prototype_rows(tmp_path, monkeypatch):
    # A kernel spec of our own, so the notebooks run on this interpreter (the venv), whatever else is installed.
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lakeforge tests", "language": "python"}))
    work = tmp_path / "work"
    for name, value in {"JUPYTER_PATH": tmp_path / "jupyter", "LAKEFORGE_NOTEBOOK_DIR": work,
                        "LAKEFORGE_NOTEBOOK_CUSTOMERS": 300, "LAKEFORGE_NOTEBOOK_DAYS": 150,
                        "LAKEFORGE_ENV": "test", "LAKEFORGE_CONF_DIR": REPO / "conf"}.items():
        monkeypatch.setenv(name, str(value))

    before = sorted(p.relative_to(REPO) for p in (REPO / "notebooks").rglob("*"))
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        # Raises CellExecutionError, with the failing cell and its traceback, if any cell fails.
        NotebookClient(notebook, kernel_name=KERNEL, timeout=600,
                       resources={"metadata": {"path": str(path.parent)}}).execute()

    prototype = json.loads((work / "pandas_features.json").read_text())
    parity = json.loads((work / "parity.json").read_text())
    assert parity == {"rows": prototype["rows"], "identical": True}
    assert prototype["rows"] > 0
    # Everything the notebooks write goes under LAKEFORGE_NOTEBOOK_DIR: nothing new beside them (they run there).
    assert sorted(p.relative_to(REPO) for p in (REPO / "notebooks").rglob("*")) == before
