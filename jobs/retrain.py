"""spark-submit entry point: apply the retrain decision monitor recorded for a date (retrain through the gate
when it fired; else nothing).

    spark-submit jobs/retrain.py --pipeline churn --date 2026-11-26 [--env cluster] [--skipped-exit 99]

Arguments are those of `lakeforge retrain` (see `lakeforge retrain --help`).
"""

import sys

from lakeforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["retrain", *sys.argv[1:]]))
