"""spark-submit entry point: Load new landing files into bronze/silver (bad rows to ops.quarantine).

    spark-submit jobs/ingest.py --pipeline churn [--env cluster] [--set key=value]

Arguments are those of `lakeforge ingest` (see `lakeforge ingest --help`).
"""

import sys

from lakeforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
