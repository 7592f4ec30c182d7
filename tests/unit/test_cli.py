"""`lakeforge VERB --help`: what each verb reads and writes, an example that parses, the exit codes."""

from __future__ import annotations

import shlex

import pytest

from lakeforge import cli

WRITES = {"demo": "row count", "generate": "_manifest.json", "ingest": "ops.quarantine",
          "features": "gold.<pipeline>_features", "train": "@challenger", "score": "gold.<pipeline>_predictions",
          "maintain": "(VACUUM)", "monitor": "ops.monitoring", "retrain": "writes nothing", "promote": "ops.audit", "run": "ops.runs", "status": "ops.runs",
          "doctor": "Writes nothing. Exit 0 when every\ntable is healthy, 2 when any is not",
          "setup-jars": "jar cache", "access": "ops.audit"}


def test_every_verb_has_its_details():
    verbs = cli.build_parser()._subparsers._group_actions[0].choices
    assert set(verbs) == set(cli.DETAILS) == set(WRITES)


@pytest.mark.parametrize("verb", sorted(WRITES))
def test_verb_help_says_what_it_writes_with_an_example_that_parses(verb, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([verb, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert WRITES[verb] in text
    assert "exit codes: 0 done; 1 a Spark or MLflow failure" in text
    examples = [line.removeprefix("example: ") for line in text.splitlines() if line.startswith("example: ")]
    assert len(examples) == (0 if verb == "setup-jars" else 1)
    for example in examples:
        argv = shlex.split(example)
        assert argv[:2] == ["lakeforge", verb]
        assert cli.build_parser().parse_args(argv[1:]).verb == verb  # a usage error would exit 2 here
