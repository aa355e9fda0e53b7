#!/usr/bin/env bash
# The local Prefect platform: PostgreSQL, `prefect server start` on it, an S3 endpoint, work pools,
# deployments, workers.
#   server.sh start   start what is not running (idempotent), register pools, blocks and deployments
#   server.sh stop    stop workers, then the server, the S3 endpoint and PostgreSQL (by PID)
# Flow runs start in the prewarmed server (deployments/prewarmed.py: Prefect and the flows imported once,
# each run a fork), through the pools' command deployments.launch, which falls back to a plain
# `python -m prefect.engine` when the server does not answer.
# The S3 endpoint is moto_server, a stand-in for AWS S3 (in memory: its objects are gone when it stops).
# It holds the workers' shared result storage (bucket sunday-results, block s3-bucket/sunday-results)
# and the deploy worker's database backups (bucket sunday-backups).
# Env: SUNDAY_APP_REPO (the application repository the deployments build; default: a copy of app/),
#      SUNDAY_PLATFORM_DIR (default /var/lib/sunday-release/platform), PREFECT_PORT (4200), PREFECT_DB_PORT (5433),
#      SUNDAY_S3_PORT (9000).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
dir=${SUNDAY_PLATFORM_DIR:-/var/lib/sunday-release/platform}
port=${PREFECT_PORT:-4200}
dbport=${PREFECT_DB_PORT:-5433}
s3port=${SUNDAY_S3_PORT:-9000}
s3=http://127.0.0.1:$s3port
pg=/usr/lib/postgresql/15/bin
bin=$top/.venv/bin
pools=(sunday-ci sunday-deploy sunday-e2e)
log() { printf '[server] %s\n' "$*" >&2; }
as_pg() { runuser -u postgres -- "$@"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# stop the process of a PID file: SIGTERM, up to 30 s to exit, then SIGKILL
halt() {
  alive "$1" || return 0
  local pid; pid=$(cat "$1"); kill "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  log "$(basename "$1") (PID $pid) did not stop on SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true
}

start() {
  mkdir -p "$dir/pg" "$dir/pids" "$dir/logs"
  chown postgres:postgres "$dir/pg"
  if [ ! -f "$dir/pg/PG_VERSION" ]; then
    log "initdb $dir/pg"
    as_pg "$pg/initdb" -D "$dir/pg" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\n" "$dbport" "$dir/pg" \
      >> "$dir/pg/postgresql.conf"
  fi
  if ! as_pg "$pg/pg_ctl" status -D "$dir/pg" >/dev/null 2>&1; then
    as_pg "$pg/pg_ctl" start -w -D "$dir/pg" -l "$dir/pg/postgres.log" >/dev/null
  fi
  [ -f "$dir/db-password" ] || { head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$dir/db-password"; chmod 600 "$dir/db-password"; }
  pw=$(cat "$dir/db-password")
  psql=(as_pg "$pg/psql" -h "$dir/pg" -p "$dbport" -d postgres -qAt)
  if [ -z "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname='prefect'")" ]; then
    "${psql[@]}" <<<"CREATE ROLE prefect LOGIN PASSWORD '$pw'; CREATE DATABASE prefect OWNER prefect;"
    as_pg "$pg/psql" -h "$dir/pg" -p "$dbport" -d prefect -qAt -c "CREATE EXTENSION IF NOT EXISTS pg_trgm"
  fi
  export PREFECT_HOME=$dir/prefect PREFECT_API_URL=http://127.0.0.1:$port/api
  if ! alive "$dir/pids/server" && curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1; then
    log "another Prefect server answers on port $port (the CLI's? \`sunday-release server stop\`); or set PREFECT_PORT"
    exit 1
  fi
  if ! alive "$dir/pids/server"; then
    log "prefect server on 127.0.0.1:$port (PostgreSQL 127.0.0.1:$dbport)"
    PREFECT_SERVER_DATABASE_CONNECTION_URL="postgresql+asyncpg://prefect:$pw@127.0.0.1:$dbport/prefect" PREFECT_UI_API_URL=$PREFECT_API_URL \
      nohup "$bin/prefect" server start --host 127.0.0.1 --port "$port" >"$dir/logs/server.log" 2>&1 &
    echo $! > "$dir/pids/server"
  fi
  for _ in $(seq 1 120); do curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1 && break; sleep 1; done
  curl -fsS "$PREFECT_API_URL/health" >/dev/null || { log "server did not start; see $dir/logs/server.log"; exit 1; }
  if ! alive "$dir/pids/s3"; then
    log "S3 endpoint (moto_server, stand-in for AWS S3) on $s3"
    nohup "$bin/moto_server" -H 127.0.0.1 -p "$s3port" >"$dir/logs/s3.log" 2>&1 &
    echo $! > "$dir/pids/s3"
  fi
  for _ in $(seq 1 60); do curl -fsS "$s3" >/dev/null 2>&1 && break; sleep 0.5; done
  # dummy keys for moto (it takes any), never the caller's real ones: they would be saved in the block.
  # On AWS the workers get a role instead (docs/production.md).
  export AWS_ACCESS_KEY_ID=local-moto-not-a-key AWS_SECRET_ACCESS_KEY=local-moto-not-a-secret AWS_REGION=us-east-1
  unset AWS_PROFILE AWS_SESSION_TOKEN
  results_block=$(cd "$top" && "$bin/python" -m deployments.result_storage --endpoint "$s3" \
    --bucket sunday-results --also-create sunday-backups) \
    || { log "could not register the result storage on $s3; see $dir/logs/s3.log"; exit 1; }
  # every pool starts its flow runs through deployments.launch: in the prewarmed server when it answers
  (cd "$top" && "$bin/python" -m deployments.prewarmed --pool-template) > "$dir/pool-template.json"
  for pool in "${pools[@]}"; do
    if "$bin/prefect" work-pool inspect "$pool" >/dev/null 2>&1; then
      "$bin/prefect" work-pool update "$pool" --base-job-template "$dir/pool-template.json" >/dev/null
    else
      "$bin/prefect" work-pool create "$pool" --type process --base-job-template "$dir/pool-template.json" >/dev/null
    fi
  done
  if ! alive "$dir/pids/prewarmed"; then
    nohup env -C "$top" "$bin/python" -m deployments.prewarmed --socket "$dir/prewarm.sock" \
      >"$dir/logs/prewarmed.log" 2>&1 &
    echo $! > "$dir/pids/prewarmed"
  fi
  if [ -z "${SUNDAY_APP_REPO:-}" ]; then
    export SUNDAY_APP_REPO=$dir/app-repo
    if [ ! -d "$SUNDAY_APP_REPO/.git" ]; then
      cp -a "$top/app/." "$SUNDAY_APP_REPO/"
      git -C "$SUNDAY_APP_REPO" init -q -b main
      git -C "$SUNDAY_APP_REPO" -c user.name=sunday -c user.email=sunday@localhost add -A
      git -C "$SUNDAY_APP_REPO" -c user.name=sunday -c user.email=sunday@localhost commit -qm "sample app"
    fi
  fi
  export SUNDAY_RELEASE_DIR=$top
  (cd "$top" && "$bin/prefect" --no-prompt deploy --all >"$dir/logs/deploy.log" 2>&1) \
    || { log "prefect deploy --all failed; see $dir/logs/deploy.log"; exit 1; }
  # a script's background jobs ignore SIGINT, and a worker stops on SIGTERM by sending itself SIGINT:
  # env --default-signal=INT gives it back, or `stop` could not stop the workers
  for pool in "${pools[@]}"; do
    if ! alive "$dir/pids/worker-$pool"; then
      PREFECT_RESULTS_PERSIST_BY_DEFAULT=true PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=$results_block \
        SUNDAY_BACKUP_BUCKET=sunday-backups SUNDAY_S3_ENDPOINT=$s3 PREFECT_WORKER_QUERY_SECONDS=0.5 \
        SUNDAY_PREWARM_SOCKET=$dir/prewarm.sock \
        nohup env --default-signal=INT "$bin/prefect" worker start --pool "$pool" >"$dir/logs/worker-$pool.log" 2>&1 &
      echo $! > "$dir/pids/worker-$pool"
    fi
  done
  log "UI http://127.0.0.1:$port — deployments: $("$bin/prefect" deployment ls 2>/dev/null | grep -c '/' || true) registered"
  log "app repository: $SUNDAY_APP_REPO"
  log "results: $results_block (s3://sunday-results at $s3); backups: s3://sunday-backups"
}

stop() {
  for pool in "${pools[@]}"; do halt "$dir/pids/worker-$pool" & done
  wait
  halt "$dir/pids/server"
  halt "$dir/pids/s3"
  halt "$dir/pids/prewarmed"
  as_pg "$pg/pg_ctl" status -D "$dir/pg" >/dev/null 2>&1 && as_pg "$pg/pg_ctl" stop -m fast -D "$dir/pg" >/dev/null || true
  rm -f "$dir"/pids/*
  log "stopped"
}

case "${1:-start}" in start) start ;; stop) stop ;; *) echo "usage: $0 start|stop" >&2; exit 2 ;; esac
