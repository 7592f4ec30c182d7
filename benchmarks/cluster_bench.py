"""The same scoring job in local[2] and on a Spark standalone cluster (two workers, one core each).

    .venv/bin/python benchmarks/cluster_bench.py [--customers 3000] [--days 150] [--repeat 2] [--keep DIR]

Set-up, timed apart and not compared: demo data, then ingest, train (sqlite MLflow) and the features
for the score date, in local[2]. Then `lakeforge score` for that date is submitted the same way the
nightly job is (`docker/entrypoint.sh submit score`, shipping the wheel) alternately with
`--master local[2]` and to the cluster, `--repeat` times each. Spark event logs say where the time
goes: launching the driver (JVM, Python, imports, session), getting executors, the Spark jobs, the
driver's own work between jobs (MLflow, Delta log), and stopping. The cluster (a master and two
workers on 127.0.0.1) is started and stopped here, also on failure. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import record  # benchmarks/record.py, beside this script

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEFORGE_", "SPARK_", "PYSPARK_", "MLFLOW_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1", LAKEFORGE_CONF_DIR=str(REPO / "conf"))
    return env


def log(message: str) -> None:
    print(f"[cluster_bench] {message}", file=sys.stderr, flush=True)


class Cluster:
    """A master and two one-core workers started with docker/entrypoint.sh; stop() ends their process groups."""

    def __init__(self, root: Path):
        self.root, self.processes = root, []
        self.port, self.ui_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"

    def _start(self, name: str, role: str, env: dict) -> None:
        with (self.root / f"{name}.log").open("ab") as out:
            self.processes.append(subprocess.Popen(["bash", str(ENTRYPOINT), role], env=base_env() | env, stdout=out,
                                                   stderr=subprocess.STDOUT, start_new_session=True))

    def _status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=2) as response:
            return json.load(response)

    def start(self) -> None:
        self._start("master", "master", {"SPARK_MASTER_HOST": "127.0.0.1", "SPARK_MASTER_PORT": str(self.port),
                                         "SPARK_MASTER_WEBUI_PORT": str(self.ui_port)})
        for n in (1, 2):
            work = self.root / f"worker-{n}"
            work.mkdir(exist_ok=True)
            self._start(f"worker-{n}", "worker", {
                "SPARK_MASTER_URL": self.url, "SPARK_WORKER_HOST": "127.0.0.1", "SPARK_WORKER_CORES": "1",
                "SPARK_WORKER_MEMORY": "1g", "SPARK_WORKER_WEBUI_PORT": str(free_port()), "SPARK_WORKER_DIR": str(work)})
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if self._status().get("aliveworkers") == 2:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"the cluster did not come up; see {self.root}/*.log")

    def stop(self) -> None:
        for process in reversed(self.processes):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=30)
                    break
                except subprocess.TimeoutExpired:
                    continue
            try:
                os.killpg(process.pid, signal.SIGKILL)  # executors that outlived their worker
            except ProcessLookupError:
                pass


def lakeforge(root: Path, overrides: list[str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "lakeforge", *args, "--env", "test", *overrides], cwd=root,
                          env=base_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"lakeforge {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def submit_score(root: Path, master: str, overrides: list[str], score_date: str, py_files: Path,
                 event_dir: Path) -> dict:
    """One `entrypoint.sh submit score` against `master`; wall time and the event-log breakdown."""
    shutil.rmtree(event_dir, ignore_errors=True)
    event_dir.mkdir(parents=True)
    env = base_env() | {"SPARK_MASTER_URL": master, "SPARK_DRIVER_HOST": "127.0.0.1", "LAKEFORGE_PY_FILES": str(py_files),
                        "SPARK_DRIVER_MEMORY": "1g", "SPARK_EXECUTOR_MEMORY": "768m"}
    argv = ["bash", str(ENTRYPOINT), "submit", "score", "--pipeline", "churn", "--date", score_date, "--env", "test",
            *overrides, "--set", f"spark.event_log_dir={event_dir}"]
    started = time.time()
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, start_new_session=True)
    ended = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"score on {master} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    (log,) = list(event_dir.iterdir())  # one application per folder
    return {"wall_s": ended - started, **breakdown(read_events(log), started, ended)}


def read_events(log: Path) -> list[dict]:
    """A Spark event log's events: one file, or Spark 4's rolling folder (eventlog_v2_*) of compressed parts."""
    import pyarrow as pa

    parts = [log] if log.is_file() else sorted(log.glob("events_*"), key=lambda p: int(p.name.split("_")[1]))
    events = []
    for part in parts:
        codec = {".zstd": "zstd", ".zst": "zstd", ".lz4": "lz4", ".gz": "gzip"}.get(part.suffix)
        stream = pa.OSFile(str(part))
        data = (pa.CompressedInputStream(stream, codec) if codec else stream).read()
        events += [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    return events


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def breakdown(events: list[dict], submitted: float, exited: float) -> dict:
    """Where one application's time went, from its Spark event log (timestamps in ms)."""
    app_start = app_end = None
    executors, jobs, tasks = [], {}, []
    for event in events:
        kind = event["Event"]
        if kind == "SparkListenerApplicationStart":
            app_start = event["Timestamp"] / 1000
        elif kind == "SparkListenerApplicationEnd":
            app_end = event["Timestamp"] / 1000
        elif kind == "SparkListenerExecutorAdded":
            executors.append(event["Timestamp"] / 1000)
        elif kind == "SparkListenerJobStart":
            jobs[event["Job ID"]] = [event["Submission Time"] / 1000, None]
        elif kind == "SparkListenerJobEnd":
            jobs[event["Job ID"]][1] = event["Completion Time"] / 1000
        elif kind == "SparkListenerTaskEnd":
            metrics = event.get("Task Metrics") or {}
            info = event["Task Info"]
            tasks.append({"run": metrics.get("Executor Run Time", 0) / 1000,
                          "deserialize": metrics.get("Executor Deserialize Time", 0) / 1000,
                          "gc": metrics.get("JVM GC Time", 0) / 1000,
                          "wall": (info["Finish Time"] - info["Launch Time"]) / 1000})
    job_intervals = [(a, b) for a, b in jobs.values() if b is not None]
    in_jobs = _union_seconds(job_intervals)
    first_job = min((a for a, _ in job_intervals), default=app_start)
    # Executors the driver got before its first job (local mode: the driver itself, at start).
    ready = max([t for t in executors if t <= first_job] or [app_start])
    return {
        "launch_s": round(app_start - submitted, 2),          # spark-submit, JVM, Python, imports, SparkContext
        "executors_s": round(max(0.0, ready - app_start), 2),  # until the executors it uses are registered
        "jobs_s": round(in_jobs, 2),                            # some Spark job running
        "driver_s": round((app_end - app_start) - in_jobs - max(0.0, ready - app_start), 2),  # between jobs
        "stop_s": round(exited - app_end, 2),                   # stopping the context, the JVM, the process
        "spark_jobs": len(jobs),
        "tasks": len(tasks),
        "task_run_s": round(sum(t["run"] for t in tasks), 2),
        "task_deserialize_s": round(sum(t["deserialize"] for t in tasks), 2),
        "task_gc_s": round(sum(t["gc"] for t in tasks), 2),
        "task_overhead_s": round(sum(t["wall"] - t["run"] for t in tasks), 2),  # scheduling, (de)serialization, results
        "executors": len(executors),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--stores", type=int, default=20)
    parser.add_argument("--days", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=2, help="score runs per master (alternating)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    record.add_argument(parser, "cluster_bench")
    args = parser.parse_args(argv)
    recorder = record.Recorder("cluster_bench", args.results)

    root = Path(args.keep or tempfile.mkdtemp(prefix="lakeforge-cluster-bench-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    overrides = [arg for key, value in {"paths.landing": root / "landing", "paths.lakehouse": root / "lakehouse",
                                        "paths.reports": root / "reports",
                                        "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
                                        "mlflow.artifact_root": root / "mlartifacts"}.items()
                 for arg in ("--set", f"{key}={value}")]
    setup_started = time.monotonic()
    done_marker = root / "setup.json"
    spec = {"customers": args.customers, "stores": args.stores, "days": args.days}
    if done_marker.is_file() and json.loads(done_marker.read_text())["spec"] == spec:
        score_date = json.loads(done_marker.read_text())["score_date"]  # --keep: reuse an earlier set-up
        log(f"reusing the set-up in {root}")
    else:
        log(f"set-up in {root}: {args.customers} customers, {args.days} days")
        lakeforge(root, overrides, "generate", f"--customers={args.customers}", f"--stores={args.stores}",
                  f"--days={args.days}")
        lakeforge(root, overrides, "ingest")
        lakeforge(root, overrides, "train")
        features = lakeforge(root, overrides, "features")
        score_date = next(line.split("'")[1] for line in features.splitlines() if line.startswith("dates:"))
        done_marker.write_text(json.dumps({"spec": spec, "score_date": score_date}))
    built = subprocess.run(["bash", str(REPO / "scripts" / "build-dist.sh"), str(root / "dist")],
                           env=base_env() | {"PYTHON": sys.executable}, capture_output=True, text=True, check=True)
    py_files = Path(built.stdout.split()[-1])
    setup_s = time.monotonic() - setup_started
    log(f"set-up done in {setup_s:.0f}s; scoring {score_date}")

    cluster = Cluster(root)
    runs: dict[str, list[dict]] = {"local[2]": [], "cluster": []}
    try:
        started = time.monotonic()
        cluster.start()
        cluster_start_s = time.monotonic() - started
        log(f"cluster up in {cluster_start_s:.0f}s ({cluster.url})")
        for i in range(args.repeat):
            for name, master in (("local[2]", "local[2]"), ("cluster", cluster.url)):
                result = submit_score(root, master, overrides, score_date, py_files, root / "events" / f"{name}-{i}")
                runs[name].append(result)
                log(f"{name} run {i + 1}: {result['wall_s']:.1f}s  {json.dumps(result)}")
    finally:
        cluster.stop()

    import pandas as pd
    from deltalake import DeltaTable

    predictions = DeltaTable(str(root / "lakehouse" / "gold" / "churn_predictions")).to_pandas()
    rows = int((predictions["score_date"].astype(str) == score_date).sum())

    def median(name: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[name]), 2)

    keys = ["wall_s", "launch_s", "executors_s", "jobs_s", "driver_s", "stop_s", "spark_jobs", "tasks",
            "task_run_s", "task_overhead_s"]
    table = pd.DataFrame({name: {k: median(name, k) for k in keys} for name in runs})
    print(f"\nscoring {rows:,} customers for {score_date}, median of {args.repeat} run(s) each "
          f"(set-up {setup_s:.0f}s, cluster start {cluster_start_s:.0f}s, not included):")
    print(table.to_string())
    ratio = median("cluster", "wall_s") / median("local[2]", "wall_s")
    print(f"cluster / local[2] wall time: {ratio:.2f}")
    recorder.write({"job": "score", "customers": args.customers, "days": args.days,
                    "rows_scored": rows, "repeat": args.repeat, "ratio_cluster_to_local2": round(ratio, 2),
                    "local2": {k: median("local[2]", k) for k in keys},
                    "cluster": {k: median("cluster", k) for k in keys},
                    "cluster_start_s": round(cluster_start_s, 1), "setup_s": round(setup_s, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
