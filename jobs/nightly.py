"""spark-submit entry point: the nightly sequence (ingest new files, build features, score and monitor the
date; retrain when the policy fires), for every pipeline of conf/pipelines in turn, or the one --pipeline names.

    spark-submit jobs/nightly.py [--pipeline churn] [--date 2026-11-26] [--env cluster]

Arguments are those of `lakeforge run nightly` (see `lakeforge run --help`); so is the exit code: a pipeline
that fails does not stop the others, and the first failure's code ends the job.
"""

import sys

from lakeforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "nightly", *sys.argv[1:]]))
