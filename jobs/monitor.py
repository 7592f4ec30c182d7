"""spark-submit entry point: monitor a date (drift, matured performance, retrain decision) into ops.monitoring.

    spark-submit jobs/monitor.py --pipeline churn --date 2026-11-26 [--env cluster] [--set key=value]

Arguments are those of `lakeforge monitor` (see `lakeforge monitor --help`).
"""

import sys

from lakeforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["monitor", *sys.argv[1:]]))
