#!/bin/sh
# Arguments: the targets to scrape (host:port; the host's own services are host.docker.internal:PORT), every 15 s
# on /metrics, and Prometheus itself. Then prometheus, PID 1, its data on /data. As prometheus.
set -eu
targets="'localhost:9090'"
for target in "$@"; do targets="$targets, '$target'"; done
printf "global: {scrape_interval: 15s}\nscrape_configs:\n  - job_name: dev\n    static_configs:\n      - targets: [%s]\n" \
  "$targets" > /data/prometheus.yml
exec /usr/bin/prometheus --config.file=/data/prometheus.yml --storage.tsdb.path=/data/tsdb --web.listen-address=0.0.0.0:9090
