"""spark-submit entry point: Score a date with <pipeline>@champion into gold.<pipeline>_predictions.

    spark-submit jobs/score.py --pipeline churn --date 2026-11-26 [--env cluster] [--set key=value]

Arguments are those of `lakeforge score` (see `lakeforge score --help`).
"""

import sys

from lakeforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
