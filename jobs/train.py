"""spark-submit entry point: Train, evaluate on a time-based holdout, register in MLflow and set @champion.

    spark-submit jobs/train.py --pipeline churn [--env cluster] [--set key=value]

Arguments are those of `lakeforge train` (see `lakeforge train --help`).
"""

import sys

from lakeforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
