#!/usr/bin/env bash
# Install Debian's PostgreSQL server for the `cluster` tests (an MLflow tracking server on PostgreSQL),
# only when it is missing. Idempotent; creates no database cluster and starts no server: the tests
# run their own, in a temporary folder on loopback, and stop it. Needs root (or sudo) to install.
set -euo pipefail

installed() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; }

if installed; then
    echo "install-postgres: PostgreSQL is installed ($(ls -d /usr/lib/postgresql/*/ | xargs -n1 basename | tr '\n' ' '))"
    exit 0
fi

sudo=()
if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null || { echo "install-postgres: needs root or sudo to run apt-get" >&2; exit 1; }
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive

# Keep the packages from starting a server during the install (what container images do, too).
policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod +x "$policy"
    added_policy=1
fi
trap '[[ $added_policy == 1 ]] && "${sudo[@]}" rm -f "$policy"' EXIT

"${sudo[@]}" apt-get update -qq
# postgresql-common first, so its settings can say: no default "main" cluster on port 5432.
"${sudo[@]}" apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null
conf=/etc/postgresql-common/createcluster.conf
if [[ -f "$conf" ]] && ! grep -q '^create_main_cluster *= *false' "$conf"; then
    "${sudo[@]}" sed -i 's/^#\? *create_main_cluster *=.*/create_main_cluster = false/' "$conf"
fi
"${sudo[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null

installed || { echo "install-postgres: apt-get finished but initdb/pg_ctl are still missing" >&2; exit 1; }
echo "install-postgres: installed $(ls -d /usr/lib/postgresql/*/ | xargs -n1 basename | tr '\n' ' ')"
