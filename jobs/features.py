"""spark-submit entry point: Build gold.<pipeline>_features for a date.

    spark-submit jobs/features.py --pipeline churn --date 2026-11-26 [--env cluster] [--set key=value]

Arguments are those of `lakeforge features` (see `lakeforge features --help`).
"""

import sys

from lakeforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
