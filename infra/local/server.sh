#!/usr/bin/env bash
# The local Prefect platform: PostgreSQL, `prefect server start` on it, an S3 endpoint, work pools,
# deployments, workers.
#   server.sh start   start what is not running (idempotent), register pools, blocks and deployments
#   server.sh stop    stop workers, then the server, the S3 endpoint and PostgreSQL (by PID)
#   server.sh restart-server   stop the Prefect server and start it again (after a Prefect upgrade or a server
#                     setting changed): PostgreSQL, the S3 endpoint, the workers and their flow runs keep going,
#                     their clients retry through the gap (PREFECT_CLIENT_MAX_RETRIES)
# Flow runs start in the prewarmed server (deployments/prewarmed.py: Prefect and the flows imported once,
# each run a fork), through the pools' command deployments.launch, which falls back to a plain
# `python -m prefect.engine` when the server does not answer.
# Flow runs send heartbeats every SUNDAY_HEARTBEAT_SECONDS (default 60: PREFECT_FLOWS_HEARTBEAT_FREQUENCY);
# prefect.yaml's `automations:` (registered by infra/prefect/automations.py; SUNDAY_ZOMBIE_SECONDS overrides the
# zombie window) mark a run Crashed when they stop, and post crashed pipeline runs to SUNDAY_NOTIFY_URL (or the
# Secret block sunday-notify-webhook) when one is set.
# Concurrency leases (the `ci` deployment's limit, each environment's deploy slot) are kept in files under
# $dir/prefect (PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE): Prefect's default keeps them in the server's memory, so a
# restarted server would refuse their renewals and free nothing on their release (a deploy slot stays taken).
# The S3 endpoint is moto_server, a stand-in for AWS S3 (in memory: its objects are gone when it stops).
# It holds the workers' shared result storage (bucket sunday-results, block s3-bucket/sunday-results)
# and the deploy worker's database backups (bucket sunday-backups).
# The API takes Prefect's basic authentication: the string is generated once into $dir/api-auth (0600) and
# given to every client started here (PREFECT_API_AUTH_STRING); the UI asks for it. $dir is root's and
# PostgreSQL's group only (0710), its logs and secrets are 0600.
# Env: SUNDAY_APP_REPO (the application repository the deployments build; default: a copy of app/),
#      SUNDAY_PLATFORM_DIR (default /var/lib/sunday-release/platform), PREFECT_PORT (4200), PREFECT_DB_PORT (5433),
#      SUNDAY_S3_PORT (9000), SUNDAY_HEARTBEAT_SECONDS (60), SUNDAY_WORKER_QUERY_SECONDS (1: how often each pool's
#      worker asks for runs, PREFECT_WORKER_QUERY_SECONDS; a run waits half of it on average, and the polls of the
#      three workers are much of what an idle platform costs: 15 CPU-s a minute at 1 s, 20 at 0.5 s; Prefect's
#      default is 10),
#      SUNDAY_CI_POOL_KIND (process, or docker: CI runs in containers of SUNDAY_PIPELINE_IMAGE, the pipeline's own
#      image pinned by digest, through a prefect-docker worker; deployments/pools.py),
#      SERVER_REPLICAS (1; 2 or more: the HA shape below), SUNDAY_REDIS_PORT (6380),
#      SUNDAY_PROMETHEUS_PORT (9090: the platform's Prometheus, infra/local/prometheus.yml), SUNDAY_ALERTMANAGER_PORT
#      (9093) and the receivers of its alerts, SUNDAY_ALERT_* (deployments/alerting.py; docs/monitoring.md),
#      SUNDAY_EXPORTER_PORT (9469: the pipeline's own metrics, `sunday-release exporter`), SUNDAY_LOG_FORMAT (text,
#      or json: the workers' flow runs log one JSON object a line, adapters/logs.py).
# SERVER_REPLICAS=N (N >= 2), Prefect's documented high-availability shape: N API processes
# (`prefect server start --no-services`, ports PREFECT_PORT+1..N) behind nginx on PREFECT_PORT, the background
# services as their own process (`prefect server services start`), migrations run once before them, and Redis
# (Debian's redis-server, 127.0.0.1:SUNDAY_REDIS_PORT, a password of its own) for messaging, causal ordering,
# concurrency leases and Docket's coordination (prefect-redis). A replica that dies is taken out by nginx, which
# sends the request to another (its clients retry what was cut off); `restart-server` restarts the replicas one at
# a time, so the API never goes away.
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
heartbeat=${SUNDAY_HEARTBEAT_SECONDS:-60}
query=${SUNDAY_WORKER_QUERY_SECONDS:-1}
ci_kind=${SUNDAY_CI_POOL_KIND:-process}
replicas=${SERVER_REPLICAS:-1}
redisport=${SUNDAY_REDIS_PORT:-6380}
promport=${SUNDAY_PROMETHEUS_PORT:-9090}
prometheus_url=http://127.0.0.1:$promport
amport=${SUNDAY_ALERTMANAGER_PORT:-9093}
exporterport=${SUNDAY_EXPORTER_PORT:-9469}
logformat=${SUNDAY_LOG_FORMAT:-text}
case "$logformat" in
  text|json) ;;
  *) echo "[server] SUNDAY_LOG_FORMAT: '$logformat' is not a log format (text, json)" >&2; exit 2 ;;
esac
case "$replicas" in
  ''|*[!0-9]*|0) echo "[server] SERVER_REPLICAS: expected a whole number of API processes >= 1, got '$replicas'" >&2
                 exit 2 ;;
esac
case "$ci_kind" in
  process) ;;
  docker) [ -n "${SUNDAY_PIPELINE_IMAGE:-}" ] || { echo "[server] SUNDAY_CI_POOL_KIND=docker needs" \
            "SUNDAY_PIPELINE_IMAGE (the pipeline's image, REGISTRY/NAME@sha256:…)" >&2; exit 2; } ;;
  *) echo "[server] SUNDAY_CI_POOL_KIND: '$ci_kind' is not a kind this script runs (process, docker)" >&2; exit 2 ;;
esac
kind_of() { if [ "$1" = sunday-ci ]; then echo "$ci_kind"; else echo process; fi; }
log() { printf '[server] %s\n' "$*" >&2; }
as_pg() { runuser -u postgres -- "$@"; }
# curl with the API's auth string, never on its command line (visible to every local user in ps)
api() { printf 'user = "%s"\n' "$PREFECT_API_AUTH_STRING" | curl -K - "$@"; }
# a log file only its owner reads (truncated)
logfile() { : > "$dir/logs/$1.log"; chmod 600 "$dir/logs/$1.log"; echo "$dir/logs/$1.log"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# stop the process of a PID file: SIGTERM, up to 30 s to exit, then SIGKILL
halt() {
  alive "$1" || return 0
  local pid; pid=$(cat "$1"); kill "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  log "$(basename "$1") (PID $pid) did not stop on SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true
}

# what every client started here needs: the API's URL and auth string, the database password ($pw)
server_env() {
  pw=$(cat "$dir/db-password")
  # every client started here (python, prefect CLI, prewarmed server, workers and their flow runs) sends it
  PREFECT_API_AUTH_STRING=$(cat "$dir/api-auth")
  export PREFECT_HOME=$dir/prefect PREFECT_API_URL=http://127.0.0.1:$port/api PREFECT_API_AUTH_STRING
  unset PREFECT_API_KEY  # a client would send it instead of the auth string
}

# the settings every server process of the HA shape shares (set in its subshell only: the workers and flow runs
# started here never see the database or Redis password): PostgreSQL, migrations done once, Redis for what the
# processes must agree on (prefect-redis); the passwords are read from their 0600 files, never put on a command line
ha_env() {
  local redis_pw; redis_pw=$(cat "$dir/redis-password")
  export PREFECT_SERVER_DATABASE_CONNECTION_URL="postgresql+asyncpg://prefect:$pw@127.0.0.1:$dbport/prefect" \
    PREFECT_SERVER_DATABASE_MIGRATE_ON_START=false \
    PREFECT_SERVER_API_AUTH_STRING=$PREFECT_API_AUTH_STRING PREFECT_UI_API_URL=$PREFECT_API_URL \
    PREFECT_MESSAGING_BROKER=prefect_redis.messaging PREFECT_MESSAGING_CACHE=prefect_redis.messaging \
    PREFECT_SERVER_EVENTS_CAUSAL_ORDERING=prefect_redis.ordering \
    PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect_redis.lease_storage \
    PREFECT_REDIS_MESSAGING_HOST=127.0.0.1 PREFECT_REDIS_MESSAGING_PORT=$redisport \
    PREFECT_REDIS_MESSAGING_DB=0 PREFECT_REDIS_MESSAGING_PASSWORD=$redis_pw \
    PREFECT_SERVER_DOCKET_URL="redis://:$redis_pw@127.0.0.1:$redisport/1" PREFECT_SERVER_ANALYTICS_ENABLED=false
}

start_redis() {
  [ -f "$dir/redis-password" ] || { (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$dir/redis-password"); }
  chmod 600 "$dir/redis-password"
  install -d -m 0700 "$dir/redis"
  (umask 077; printf 'bind 127.0.0.1\nport %s\ndir %s\nrequirepass %s\nsave ""\nappendonly no\nprotected-mode yes\n' \
    "$redisport" "$dir/redis" "$(cat "$dir/redis-password")" > "$dir/redis/redis.conf")
  if ! alive "$dir/pids/redis"; then
    log "redis-server on 127.0.0.1:$redisport"
    nohup redis-server "$dir/redis/redis.conf" >"$(logfile redis)" 2>&1 &
    echo $! > "$dir/pids/redis"
  fi
  for _ in $(seq 1 40); do
    REDISCLI_AUTH=$(cat "$dir/redis-password") redis-cli -p "$redisport" ping 2>/dev/null | grep -q PONG && return
    sleep 0.25
  done
  log "redis-server did not answer on 127.0.0.1:$redisport; see $dir/logs/redis.log"; exit 1
}

# nginx on PREFECT_PORT in front of the API replicas: WebSockets (events, logs) pass through; a request that a
# replica refuses or drops goes to the next one. No replica is ever marked down (max_fails=0): a stopped replica
# refuses at once, and one marked down for a while could be the only one up when the other restarts (502s)
write_nginx_conf() {
  install -d -m 0700 "$dir/nginx"
  local upstreams="" i
  for i in $(seq 1 "$replicas"); do
    upstreams+="    server 127.0.0.1:$((port + i)) max_fails=0;"$'\n'
  done
  cat > "$dir/nginx/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $dir/pids/nginx.pid;
error_log $dir/logs/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/nginx/body;
  proxy_temp_path $dir/nginx/proxy;
  fastcgi_temp_path $dir/nginx/fastcgi;
  uwsgi_temp_path $dir/nginx/uwsgi;
  scgi_temp_path $dir/nginx/scgi;
  # bodies and answers stay in memory: the workers (user nobody) cannot enter \$dir, where temp files would go
  client_max_body_size 16m;
  client_body_buffer_size 16m;
  proxy_max_temp_file_size 0;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream prefect_api {
$upstreams  }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://prefect_api;
      proxy_http_version 1.1;
      proxy_set_header Host \$host;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
      proxy_connect_timeout 2s;
      proxy_next_upstream error timeout http_502 http_503 non_idempotent;
      proxy_next_upstream_tries $replicas;
    }
  }
}
CONF
}

wait_api() {
  for _ in $(seq 1 120); do api -fsS "$1/admin/version" >/dev/null 2>&1 && return 0; sleep 1; done
  return 1
}

# the HA shape: migrations, then the replicas, the services and nginx, each unless it runs
start_ha() {
  start_redis
  if ! alive "$dir/pids/services" || ! alive "$dir/pids/server-1"; then
    log "migrating the database (once, before the replicas start)"
    (ha_env; umask 077; "$bin/prefect" server database upgrade -y >"$(logfile migrate)" 2>&1) \
      || { log "the migration failed; see $dir/logs/migrate.log"; exit 1; }
  fi
  local i
  for i in $(seq 1 "$replicas"); do start_replica "$i"; done
  start_services
  write_nginx_conf
  if alive "$dir/pids/nginx.pid"; then
    nginx -c "$dir/nginx/nginx.conf" -s reload
  else
    log "nginx on 127.0.0.1:$port in front of $replicas API replicas"
    nohup nginx -c "$dir/nginx/nginx.conf" >"$(logfile nginx)" 2>&1 &
  fi
  wait_api "$PREFECT_API_URL" || { log "the API does not answer through nginx on $port; see $dir/logs"; exit 1; }
}

start_services() {
  alive "$dir/pids/services" && return
  log "background services (their own process)"
  (ha_env; umask 077; nohup "$bin/prefect" server services start >"$(logfile services)" 2>&1 &
   echo $! > "$dir/pids/services")
}

start_replica() {
  if ! alive "$dir/pids/server-$1"; then
    log "API replica $1 on 127.0.0.1:$((port + $1))"
    (ha_env; umask 077
     nohup "$bin/prefect" server start --host 127.0.0.1 --port "$((port + $1))" --no-services \
       >"$(logfile "server-$1")" 2>&1 &
     echo $! > "$dir/pids/server-$1")
  fi
  wait_api "http://127.0.0.1:$((port + $1))/api" \
    || { log "API replica $1 did not start; see $dir/logs/server-$1.log"; exit 1; }
}

# the Prefect server, unless it runs; then wait until it takes the auth string (server_env first)
start_server() {
  if [ "$replicas" -gt 1 ]; then start_ha; return; fi
  if ! alive "$dir/pids/server"; then
    log "prefect server on 127.0.0.1:$port (PostgreSQL 127.0.0.1:$dbport)"
    (umask 077  # its PREFECT_HOME and files: root's only
     PREFECT_SERVER_DATABASE_CONNECTION_URL="postgresql+asyncpg://prefect:$pw@127.0.0.1:$dbport/prefect" \
       PREFECT_SERVER_API_AUTH_STRING=$PREFECT_API_AUTH_STRING PREFECT_UI_API_URL=$PREFECT_API_URL \
       PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem \
       nohup "$bin/prefect" server start --host 127.0.0.1 --port "$port" >"$(logfile server)" 2>&1 &
     echo $! > "$dir/pids/server")
  fi
  wait_api "$PREFECT_API_URL" \
    || { log "server did not start or refuses $dir/api-auth; see $dir/logs/server.log"; exit 1; }
}

# The platform's Alertmanager (sunday_release/alerting.py: receivers from SUNDAY_ALERT_*, deployments/alerting.py)
# and Prometheus (infra/local/prometheus.yml): every replica of a service with `metrics_path` on this machine's
# engine, the rules of infra/k8s/monitoring, alerts to the Alertmanager; their data under $dir
start_monitoring() {
  if ! command -v prometheus >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then
    log "no prometheus or prometheus-alertmanager (Debian's packages; \`make setup\`): the platform runs without" \
      "metrics and alerts"; return
  fi
  install -d -m 0700 "$dir/prometheus" "$dir/alertmanager"
  if ! alive "$dir/pids/alertmanager"; then
    if curl -fsS "http://127.0.0.1:$amport/-/ready" >/dev/null 2>&1; then
      log "another Alertmanager answers on port $amport: set SUNDAY_ALERTMANAGER_PORT"; exit 1
    fi
    receivers=$(cd "$top" && "$bin/python" -m deployments.alerting --local "$dir/alertmanager") \
      || { log "could not write the Alertmanager configuration (SUNDAY_ALERT_*)"; exit 1; }
    log "alertmanager on 127.0.0.1:$amport (receivers: $receivers)"
    nohup prometheus-alertmanager --config.file="$dir/alertmanager/alertmanager.yml" \
      --storage.path="$dir/alertmanager/data" --web.listen-address="127.0.0.1:$amport" --cluster.listen-address= \
      >"$(logfile alertmanager)" 2>&1 &
    echo $! > "$dir/pids/alertmanager"
  fi
  if ! alive "$dir/pids/exporter"; then  # the pipeline's own metrics, read from the API (adapters/pipeline_metrics.py)
    nohup "$bin/sunday-release" exporter --port "$exporterport" >"$(logfile exporter)" 2>&1 &
    echo $! > "$dir/pids/exporter"
  fi
  if alive "$dir/pids/prometheus"; then return; fi
  if curl -fsS "$prometheus_url/-/ready" >/dev/null 2>&1; then
    log "another Prometheus answers on port $promport: set SUNDAY_PROMETHEUS_PORT"; exit 1
  fi
  (cd "$top" && "$bin/python" -m adapters.prometheus "$dir/prometheus/prometheus.yml" "127.0.0.1:$amport" \
    "127.0.0.1:$exporterport")
  log "prometheus on $prometheus_url"
  nohup prometheus --config.file="$dir/prometheus/prometheus.yml" --storage.tsdb.path="$dir/prometheus/data" \
    --storage.tsdb.retention.time=15d --web.listen-address="127.0.0.1:$promport" >"$(logfile prometheus)" 2>&1 &
  echo $! > "$dir/pids/prometheus"
  for _ in $(seq 1 60); do curl -fsS "$prometheus_url/-/ready" >/dev/null 2>&1 && return; sleep 0.5; done
  log "prometheus did not answer on $prometheus_url; see $dir/logs/prometheus.log"; exit 1
}

start() {
  # PostgreSQL (user postgres) must reach $dir/pg: the group may traverse $dir, nobody else may enter it
  mkdir -p "$dir"
  chgrp postgres "$dir"
  chmod 0710 "$dir"
  install -d -m 0700 "$dir/pg" "$dir/pids" "$dir/logs" "$dir/prefect"
  chmod 0700 "$dir/pg" "$dir/pids" "$dir/logs" "$dir/prefect"
  find "$dir/logs" -type f -exec chmod 600 {} +
  chown postgres:postgres "$dir/pg"
  if [ ! -f "$dir/pg/PG_VERSION" ]; then
    log "initdb $dir/pg"
    as_pg "$pg/initdb" -D "$dir/pg" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\n" "$dbport" "$dir/pg" \
      >> "$dir/pg/postgresql.conf"
  fi
  if ! as_pg "$pg/pg_ctl" status -D "$dir/pg" >/dev/null 2>&1; then
    as_pg "$pg/pg_ctl" start -w -D "$dir/pg" -l "$dir/pg/postgres.log" >/dev/null
    chmod 600 "$dir/pg/postgres.log"
  fi
  [ -f "$dir/db-password" ] || { head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$dir/db-password"; chmod 600 "$dir/db-password"; }
  chmod 600 "$dir/db-password"
  pw=$(cat "$dir/db-password")
  if [ ! -s "$dir/api-auth" ]; then
    (umask 077; printf 'admin:%s\n' "$(head -c 24 /dev/urandom | base64 | tr -d '/+=')" > "$dir/api-auth.tmp")
    mv "$dir/api-auth.tmp" "$dir/api-auth"
  fi
  chmod 600 "$dir/api-auth"
  psql=(as_pg "$pg/psql" -h "$dir/pg" -p "$dbport" -d postgres -qAt)
  if [ -z "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname='prefect'")" ]; then
    "${psql[@]}" <<<"CREATE ROLE prefect LOGIN PASSWORD '$pw'; CREATE DATABASE prefect OWNER prefect;"
    as_pg "$pg/psql" -h "$dir/pg" -p "$dbport" -d prefect -qAt -c "CREATE EXTENSION IF NOT EXISTS pg_trgm"
  fi
  server_env
  # /api/health answers without authentication (Prefect lets probes through); /api/admin/version does not
  if ! alive "$dir/pids/server" && ! alive "$dir/pids/nginx.pid" && curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1; then
    log "another Prefect server answers on port $port (the CLI's? \`sunday-release server stop\`); or set PREFECT_PORT"
    exit 1
  fi
  if alive "$dir/pids/server" && curl -fsS "$PREFECT_API_URL/admin/version" >/dev/null 2>&1; then
    log "the running server takes requests without authentication (started before it was configured): restarting it"
    for pool in "${pools[@]}"; do halt "$dir/pids/worker-$pool"; done
    halt "$dir/pids/prewarmed"
    halt "$dir/pids/server"
  fi
  start_server
  if ! alive "$dir/pids/s3"; then
    log "S3 endpoint (moto_server, stand-in for AWS S3) on $s3"
    nohup "$bin/moto_server" -H 127.0.0.1 -p "$s3port" >"$(logfile s3)" 2>&1 &
    echo $! > "$dir/pids/s3"
  fi
  for _ in $(seq 1 60); do curl -fsS "$s3" >/dev/null 2>&1 && break; sleep 0.5; done
  start_monitoring
  # dummy keys for moto (it takes any), never the caller's real ones: they would be saved in the block.
  # On AWS the workers get a role instead (docs/production.md).
  export AWS_ACCESS_KEY_ID=local-moto-not-a-key AWS_SECRET_ACCESS_KEY=local-moto-not-a-secret AWS_REGION=us-east-1
  unset AWS_PROFILE AWS_SESSION_TOKEN
  results_block=$(cd "$top" && "$bin/python" -m deployments.result_storage --endpoint "$s3" \
    --bucket sunday-results --also-create sunday-backups) \
    || { log "could not register the result storage on $s3; see $dir/logs/s3.log"; exit 1; }
  # every pool starts its flow runs through deployments.launch: in the prewarmed server when it answers
  # (one Python for the three pools: each `prefect work-pool` command would import Prefect again)
  if [ -z "${SUNDAY_APP_REPO:-}" ]; then
    export SUNDAY_APP_REPO=$dir/app-repo
    if [ ! -d "$SUNDAY_APP_REPO/.git" ]; then
      cp -a "$top/app/." "$SUNDAY_APP_REPO/"
      git -C "$SUNDAY_APP_REPO" init -q -b main
      git -C "$SUNDAY_APP_REPO" -c user.name=sunday -c user.email=sunday@localhost add -A
      git -C "$SUNDAY_APP_REPO" -c user.name=sunday -c user.email=sunday@localhost commit -qm "sample app"
    fi
  fi
  # a Docker pool's containers see the host's SUNDAY_HOME, Trivy cache and application repository (a path) at
  # the host's paths; an image that is not pinned is refused here (exit 2) before any pool changes
  if [ "$ci_kind" = docker ]; then
    mkdir -p "$SUNDAY_HOME"
    mounts=(); [ -d "$SUNDAY_APP_REPO" ] && mounts=(--mount "$SUNDAY_APP_REPO")
    SUNDAY_CI_TEMPLATE=$(cd "$top" && "$bin/python" -m deployments.pools docker sunday-ci \
      --image "$SUNDAY_PIPELINE_IMAGE" --sunday-home "$SUNDAY_HOME" \
      --trivy-cache "${SUNDAY_TRIVY_CACHE:-$SUNDAY_HOME/trivy-cache}" "${mounts[@]}") || exit $?
    export SUNDAY_CI_TEMPLATE
  fi
  (cd "$top" && "$bin/python" - "${pools[@]}" <<'EOF'
import json
import os
import sys

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound

from deployments.prewarmed import pool_job_template

with get_client(sync_client=True) as client:
    for pool in sys.argv[1:]:
        kind, template = "process", pool_job_template()
        if pool == "sunday-ci" and os.environ.get("SUNDAY_CI_TEMPLATE"):
            kind, template = "docker", json.loads(os.environ["SUNDAY_CI_TEMPLATE"])
        try:
            existing = client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type=kind, base_job_template=template))
        else:
            if existing.type != kind:  # a pool's kind cannot change: made again (its deployments name it)
                client.delete_work_pool(pool)
                client.create_work_pool(WorkPoolCreate(name=pool, type=kind, base_job_template=template))
            else:
                client.update_work_pool(pool, WorkPoolUpdate(base_job_template=template))
EOF
  ) || { log "could not create or update the work pools ${pools[*]}"; exit 1; }
  if [ "$logformat" = json ]; then  # the flow runs (prewarmed forks, workers' processes) log JSON lines
    (cd "$top" && "$bin/python" -m adapters.logs "$dir/logging-json.yml" >/dev/null)
    export PREFECT_LOGGING_SETTINGS_PATH=$dir/logging-json.yml
  fi
  if ! alive "$dir/pids/prewarmed"; then
    nohup env -C "$top" "$bin/python" -m deployments.prewarmed --socket "$dir/prewarm.sock" \
      >"$(logfile prewarmed)" 2>&1 &
    echo $! > "$dir/pids/prewarmed"
  fi
  export SUNDAY_RELEASE_DIR=$top
  (cd "$top" && "$bin/prefect" --no-prompt deploy --all >"$(logfile deploy)" 2>&1) \
    || { log "prefect deploy --all failed; see $dir/logs/deploy.log"; exit 1; }
  # the automations (zombie runs → Crashed, crashed pipeline runs → notification): by name, updated in place
  (cd "$top" && "$bin/python" infra/prefect/automations.py prefect.yaml >>"$dir/logs/deploy.log" 2>&1) \
    || { log "could not register the automations of prefect.yaml; see $dir/logs/deploy.log"; exit 1; }
  # a script's background jobs ignore SIGINT, and a worker stops on SIGTERM by sending itself SIGINT:
  # env --default-signal=INT gives it back, or `stop` could not stop the workers
  for pool in "${pools[@]}"; do
    if ! alive "$dir/pids/worker-$pool"; then
      PREFECT_RESULTS_PERSIST_BY_DEFAULT=true PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=$results_block \
        SUNDAY_BACKUP_BUCKET=sunday-backups SUNDAY_S3_ENDPOINT=$s3 PREFECT_WORKER_QUERY_SECONDS=$query \
        SUNDAY_PROMETHEUS_URL=$prometheus_url \
        SUNDAY_PREWARM_SOCKET=$dir/prewarm.sock PREFECT_FLOWS_HEARTBEAT_FREQUENCY=$heartbeat \
        nohup env --default-signal=INT "$bin/prefect" worker start --pool "$pool" --type "$(kind_of "$pool")" \
        >"$(logfile "worker-$pool")" 2>&1 &
      echo $! > "$dir/pids/worker-$pool"
    fi
  done
  log "UI http://127.0.0.1:$port — deployments: $(api -fsS -X POST -H 'Content-Type: application/json' -d '{}' \
    "$PREFECT_API_URL/deployments/count" || echo '?') registered"
  log "app repository: $SUNDAY_APP_REPO"
  log "results: $results_block (s3://sunday-results at $s3); backups: s3://sunday-backups"
  alive "$dir/pids/prometheus" && log "metrics: $prometheus_url (export SUNDAY_PROMETHEUS_URL=$prometheus_url);" \
    "alerts: http://127.0.0.1:$amport"
  log "the API and the UI take the auth string in $dir/api-auth; a client: export PREFECT_API_URL=$PREFECT_API_URL" \
    "PREFECT_API_AUTH_STRING=\$(cat $dir/api-auth)"
}

stop() {
  for pool in "${pools[@]}"; do halt "$dir/pids/worker-$pool" & done
  wait
  halt "$dir/pids/server"
  halt "$dir/pids/nginx.pid"
  for pidfile in "$dir"/pids/server-* "$dir/pids/services"; do halt "$pidfile"; done
  halt "$dir/pids/redis"
  halt "$dir/pids/s3"
  halt "$dir/pids/prometheus"
  halt "$dir/pids/alertmanager"
  halt "$dir/pids/exporter"
  halt "$dir/pids/prewarmed"
  as_pg "$pg/pg_ctl" status -D "$dir/pg" >/dev/null 2>&1 && as_pg "$pg/pg_ctl" stop -m fast -D "$dir/pg" >/dev/null || true
  rm -f "$dir"/pids/*
  log "stopped"
}

restart_server() {
  if [ "$replicas" -gt 1 ]; then  # one replica at a time: nginx sends the API's requests to the others meanwhile
    alive "$dir/pids/nginx.pid" || { log "no Prefect API of $dir runs: \`server.sh start\`"; exit 1; }
    server_env
    local i
    for i in $(seq 1 "$replicas"); do halt "$dir/pids/server-$i"; start_replica "$i"; done
    halt "$dir/pids/services"
    start_services
    log "$replicas API replicas and the services restarted one at a time"
    return
  fi
  alive "$dir/pids/server" || { log "no Prefect server of $dir runs: \`server.sh start\`"; exit 1; }
  server_env
  halt "$dir/pids/server"
  start_server
  log "prefect server restarted on 127.0.0.1:$port"
}

# Prefect takes heartbeats 30 s apart or more; the zombie window must leave room for at least one
case "$heartbeat" in
  ''|*[!0-9]*) echo "SUNDAY_HEARTBEAT_SECONDS: expected a whole number of seconds >= 30, got '$heartbeat'" >&2; exit 2 ;;
esac
[ "$heartbeat" -ge 30 ] || { echo "SUNDAY_HEARTBEAT_SECONDS: expected a whole number of seconds >= 30 (Prefect's" \
  "minimum), got $heartbeat" >&2; exit 2; }
if ! [[ "$query" =~ ^([1-9][0-9]?|0)(\.[0-9]{1,3})?$ ]] || awk "BEGIN { exit !($query < 0.1 || $query > 60) }"; then
  echo "SUNDAY_WORKER_QUERY_SECONDS: expected seconds from 0.1 to 60 (e.g. 1, 0.5), got '$query'" >&2; exit 2
fi
case "${SUNDAY_ZOMBIE_SECONDS:-}" in
  '') ;;
  *[!0-9]*) echo "SUNDAY_ZOMBIE_SECONDS: expected a whole number of seconds, got '$SUNDAY_ZOMBIE_SECONDS'" >&2; exit 2 ;;
  *) [ "$SUNDAY_ZOMBIE_SECONDS" -gt "$heartbeat" ] || { echo "SUNDAY_ZOMBIE_SECONDS: expected more than" \
       "SUNDAY_HEARTBEAT_SECONDS ($heartbeat): a window without a heartbeat, got $SUNDAY_ZOMBIE_SECONDS" >&2; exit 2; } ;;
esac
case "${1:-start}" in
  start) start ;; stop) stop ;; restart-server) restart_server ;;
  *) echo "usage: $0 start|stop|restart-server" >&2; exit 2 ;;
esac
