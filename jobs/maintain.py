"""spark-submit entry point: compact small files and VACUUM the tables ingest writes (when due, with
--skipped-exit, as the scheduler calls it).

    spark-submit jobs/maintain.py --pipeline churn [--env cluster] [--skipped-exit 99]

Arguments are those of `lakeforge maintain` (see `lakeforge maintain --help`).
"""

import sys

from lakeforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["maintain", *sys.argv[1:]]))
