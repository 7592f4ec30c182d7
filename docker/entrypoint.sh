#!/usr/bin/env bash
# One entry point for every lakeforge service: the docker-compose services run it in containers,
# and tests/cluster runs the very same roles on a bare machine (loopback), so both start a Spark
# master, workers and the MLflow server, and submit jobs, with identical commands.
#
#   entrypoint.sh master                      Spark standalone master
#   entrypoint.sh worker                      Spark standalone worker (registers with $SPARK_MASTER_URL)
#   entrypoint.sh mlflow                      MLflow tracking server on $MLFLOW_BACKEND_STORE_URI (read from the environment)
#   entrypoint.sh history                     Spark History Server over the event logs in $SPARK_EVENT_LOG_DIR
#   entrypoint.sh submit STAGE [ARGS...]      spark-submit jobs/STAGE.py (any of jobs/) to $SPARK_MASTER_URL (ARGS: lakeforge's)
#   entrypoint.sh scheduler HH:MM CMD...      every day at HH:MM (UTC), run `entrypoint.sh CMD...`
#   entrypoint.sh lakeforge ARGS...           the lakeforge command line (e.g. `lakeforge status`)
#
# LAKEFORGE_DRY_RUN=1 prints the command a role would run instead of running it (tests/static uses it).
set -euo pipefail

LAKEFORGE_HOME=${LAKEFORGE_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
# Every stage has its spark-submit entry point jobs/<stage>.py: submit takes each of them, and no other
# (listed from the jobs/ beside this script: in the image that is $LAKEFORGE_HOME/jobs).
STAGES=$(cd "$(dirname "$SELF")/../jobs" && for job in *.py; do printf '%s ' "${job%.py}"; done)
STAGES=${STAGES% }

log() { printf '%s [entrypoint] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

run() {
    if [[ "${LAKEFORGE_DRY_RUN:-0}" == 1 ]]; then
        printf '%q ' "$@"; printf '\n'
        exit 0
    fi
    exec "$@"
}

# The Delta jars for spark-submit: the cached ones (`lakeforge setup-jars`, baked into the image, with
# lakeforge's own JVM jar it builds), or Maven coordinates with LAKEFORGE_DELTA_FROM=packages on a cluster
# that reaches Maven Central (ingest then parses JSON lines on its all-Spark path). Either way lakeforge's
# session sees delta-spark already supplied and adds nothing itself.
delta_args() {
    local value
    case "${LAKEFORGE_DELTA_FROM:-cache}" in
        cache) if [[ "${LAKEFORGE_DRY_RUN:-0}" == 1 ]]; then  # the jar cache may be empty where it is checked
                   delta=(--jars "<cached-delta-jars>")
                   return
               fi
               value=$(python -c '
import sys
from lakeforge import jars
from lakeforge.errors import EnvironmentProblem
try:
    print(",".join(str(jar) for jar in jars.session_jars()))
except EnvironmentProblem as exc:
    sys.exit(f"entrypoint: {exc}")')
               delta=(--jars "$value") ;;
        packages) value=$(python -c 'from lakeforge import jars; print(jars.DELTA_PACKAGE)')
                  delta=(--packages "$value") ;;
        *) die "LAKEFORGE_DELTA_FROM must be cache or packages, got '$LAKEFORGE_DELTA_FROM'" ;;
    esac
}

# The JVM class archive `lakeforge setup-jars` built for this Java and PySpark, when there is one (the
# image has none): the driver maps it instead of loading Spark's classes one by one, and starts sooner.
class_archive_option() {
    [[ "${LAKEFORGE_DRY_RUN:-0}" == 1 ]] && return 0
    python -c '
from lakeforge import jars
archive = jars.class_archive()
print(f"-XX:SharedArchiveFile={archive} " if archive.is_file() else "", end="")' 2>/dev/null || true
}

# The PostgreSQL JDBC driver `lakeforge setup-jars` cached, for the driver's class path: a session given a
# shared catalog (spark.metastore_url) reaches its Hive metastore with it. Nothing when it is not cached.
metastore_driver() {
    [[ "${LAKEFORGE_DRY_RUN:-0}" == 1 ]] && return 0
    python -c '
from lakeforge import jars
from lakeforge.errors import EnvironmentProblem
try:
    print(":".join(str(jar) for jar in jars.cached_jars(jars.POSTGRES_JDBC_PACKAGE)), end="")
except EnvironmentProblem:
    pass' 2>/dev/null || true
}

role=${1:-help}
shift || true

case "$role" in
master)
    # The REST submission server (port 6066) accepts unauthenticated job submissions: off unless asked for.
    export SPARK_MASTER_OPTS="${SPARK_MASTER_OPTS:-} -Dspark.master.rest.enabled=${SPARK_MASTER_REST_ENABLED:-false}"
    run spark-class org.apache.spark.deploy.master.Master \
        --host "${SPARK_MASTER_HOST:-$(hostname)}" \
        --port "${SPARK_MASTER_PORT:-7077}" \
        --webui-port "${SPARK_MASTER_WEBUI_PORT:-8080}" "$@"
    ;;
worker)
    : "${SPARK_MASTER_URL:?set SPARK_MASTER_URL, e.g. spark://spark-master:7077}"
    run spark-class org.apache.spark.deploy.worker.Worker \
        --host "${SPARK_WORKER_HOST:-$(hostname)}" \
        --cores "${SPARK_WORKER_CORES:-1}" \
        --memory "${SPARK_WORKER_MEMORY:-1g}" \
        --webui-port "${SPARK_WORKER_WEBUI_PORT:-8081}" \
        --work-dir "${SPARK_WORKER_DIR:-/tmp/spark-work}" "$@" "$SPARK_MASTER_URL"
    ;;
mlflow)
    # Allowed Host headers come from MLFLOW_SERVER_ALLOWED_HOSTS (read by MLflow itself). The backend store URI
    # holds the database password, so it stays in the environment: `mlflow server` reads MLFLOW_BACKEND_STORE_URI
    # itself (its --backend-store-uri option's variable), and a command line is visible to every user (ps).
    : "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI, e.g. postgresql://mlflow:PASSWORD@postgres:5432/mlflow}"
    export MLFLOW_BACKEND_STORE_URI
    : "${MLFLOW_DEFAULT_ARTIFACT_ROOT:?set MLFLOW_DEFAULT_ARTIFACT_ROOT (a folder every job and the server share)}"
    # MLflow's server-side job runner (GenAI evaluation jobs) is not used by lakeforge: it would start a
    # handful of extra consumer processes and a queue folder in /dev/shm.
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
    auth=()
    if [[ "${LAKEFORGE_MLFLOW_AUTH:-none}" == basic-auth ]]; then
        # MLflow's basic-auth app, its users and permissions in the same database as the runs. The admin
        # password and the session secret come from the environment only (no default, nothing committed);
        # the auth config file holds the database URI (its password), so it is written here, readable by
        # this user only, never into the image or the repository.
        : "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD (the password of the MLflow admin user, see docs/access.md)}"
        : "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY (a long random string, see docs/access.md)}"
        export MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
        export MLFLOW_AUTH_ADMIN_USERNAME=${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
        if [[ "${LAKEFORGE_DRY_RUN:-0}" != 1 ]]; then
            MLFLOW_AUTH_CONFIG_PATH="$(umask 077 && mktemp -d)/basic_auth.ini"
            # Unknown users and resources nobody was granted get nothing: `lakeforge access sync` grants.
            (umask 077 && printf '[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = %s\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n' \
                "${MLFLOW_AUTH_DATABASE_URI:-$MLFLOW_BACKEND_STORE_URI}" >"$MLFLOW_AUTH_CONFIG_PATH")
            export MLFLOW_AUTH_CONFIG_PATH
        fi
        auth=(--app-name basic-auth)
    fi
    run mlflow server "${auth[@]}" \
        --default-artifact-root "$MLFLOW_DEFAULT_ARTIFACT_ROOT" \
        --no-serve-artifacts \
        --host "${MLFLOW_HOST:-0.0.0.0}" \
        --port "${MLFLOW_PORT:-5000}" \
        --workers "${MLFLOW_WORKERS:-2}" "$@"
    ;;
history)
    # The event logs lakeforge's sessions write (spark.event_log_dir in conf/<env>.yaml): past runs,
    # their jobs, stages and timings, after the applications have ended.
    : "${SPARK_EVENT_LOG_DIR:?set SPARK_EVENT_LOG_DIR to the folder of spark.event_log_dir, e.g. /data/spark-events}"
    history_opts=(-Dspark.history.fs.logDirectory="file:${SPARK_EVENT_LOG_DIR#file:}"
                  -Dspark.history.ui.port="${SPARK_HISTORY_PORT:-18080}"
                  -Dspark.history.fs.update.interval="${SPARK_HISTORY_UPDATE_INTERVAL:-10s}")
    [[ "${LAKEFORGE_DRY_RUN:-0}" == 1 ]] || mkdir -p "${SPARK_EVENT_LOG_DIR#file:}"  # it will not start without it
    run env SPARK_HISTORY_OPTS="${SPARK_HISTORY_OPTS:-} ${history_opts[*]}" \
        spark-class org.apache.spark.deploy.history.HistoryServer "$@"
    ;;
submit)
    stage=${1:-}
    [[ " $STAGES " == *" $stage "* ]] || die "submit needs a stage, one of: $STAGES (got '${stage}')"
    shift
    : "${SPARK_MASTER_URL:?set SPARK_MASTER_URL, e.g. spark://spark-master:7077}"
    app="$LAKEFORGE_HOME/jobs/$stage.py"
    conf_dir=${LAKEFORGE_CONF_DIR:-$LAKEFORGE_HOME/conf}
    # Executors connect back to the driver: in a container its address is the container's own.
    driver_host=${SPARK_DRIVER_HOST:-$(hostname -i | awk '{print $1}')}
    delta_args
    args=(--master "$SPARK_MASTER_URL" --name "lakeforge-$stage" --conf "spark.driver.host=$driver_host"
          "${delta[@]}"
          # spark-submit starts the driver JVM before lakeforge builds its session, so the log
          # settings must be given here for the driver to use them.
          --driver-java-options "$(class_archive_option)-Dlog4j2.configurationFile=file:$conf_dir/log4j2.properties")
    # The lakeforge wheel (as a .zip: PySpark puts only .zip/.egg/.jar --py-files on the executors'
    # sys.path), so executors run the driver's exact code; comma-separated, more files may follow.
    [[ -n "${LAKEFORGE_PY_FILES:-}" ]] && args+=(--py-files "$LAKEFORGE_PY_FILES")
    # spark-submit starts the driver JVM: the metastore's JDBC driver must be on its class path from the start
    # (used when the settings name a shared catalog, spark.metastore_url). Appended (SPARK_DIST_CLASSPATH), not
    # put first (--driver-class-path): the JVM maps the class archive only while its class path starts with
    # the one the archive was built with.
    driver_class_path=$(metastore_driver)
    [[ -n "$driver_class_path" ]] && export SPARK_DIST_CLASSPATH="${SPARK_DIST_CLASSPATH:+$SPARK_DIST_CLASSPATH:}$driver_class_path"
    [[ -n "${SPARK_DRIVER_MEMORY:-}" ]] && args+=(--driver-memory "$SPARK_DRIVER_MEMORY")
    [[ -n "${SPARK_EXECUTOR_MEMORY:-}" ]] && args+=(--executor-memory "$SPARK_EXECUTOR_MEMORY")
    export LAKEFORGE_CONF_DIR="$conf_dir"
    # lakeforge names its session from spark.app_name (over spark-submit's --name): one name per stage
    # in the master's UI; a later --set spark.app_name=... still wins.
    run spark-submit "${args[@]}" "$app" --set "spark.app_name=lakeforge-$stage" "$@"
    ;;
scheduler)
    at=${1:-}
    [[ "$at" =~ ^([01][0-9]|2[0-3]):[0-5][0-9]$ ]] || die "scheduler needs a time HH:MM (UTC), got '$at'"
    shift
    (($# > 0)) || die "scheduler needs the command to run, e.g. scheduler 02:30 submit nightly"
    if [[ "${LAKEFORGE_DRY_RUN:-0}" == 1 ]]; then
        printf 'daily at %s UTC: ' "$at"; LAKEFORGE_DRY_RUN=1 "$SELF" "$@"
        exit 0
    fi
    while true; do
        now=$(date -u +%s)
        next=$(date -u -d "today $at" +%s)
        ((next > now)) || next=$(date -u -d "tomorrow $at" +%s)
        log "next run at $(date -u -d "@$next" +%Y-%m-%dT%H:%M:%SZ): $*"
        sleep $((next - now))
        # A failed night is recorded in ops.runs by lakeforge; the scheduler stays up for the next one.
        if "$SELF" "$@"; then log "run succeeded: $*"; else log "run failed (exit $?): $*"; fi
    done
    ;;
lakeforge)
    run lakeforge "$@"
    ;;
help | -h | --help)
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    ;;
*)
    die "unknown role '$role' (master, worker, mlflow, history, submit, scheduler, lakeforge, help)"
    ;;
esac
