"""spark-submit entry point: Point an alias at a registered model version, with a reason.

    spark-submit jobs/promote.py --pipeline churn --version 3 --reason 'rollback' [--env cluster] [--set key=value]

Arguments are those of `lakeforge promote` (see `lakeforge promote --help`).
"""

import sys

from lakeforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["promote", *sys.argv[1:]]))
