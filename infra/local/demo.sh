#!/usr/bin/env bash
# The demo: copy the sample app into a throwaway git repository, run CI on it, deploy it to staging.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/sunday-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp -a "$top/app/." "$work/"
git -C "$work" init -q -b main
git -C "$work" -c user.name=demo -c user.email=demo@sunday.invalid add -A
git -C "$work" -c user.name=demo -c user.email=demo@sunday.invalid commit -q -m "sample app"
"$top/.venv/bin/python" "$top/infra/local/demo_trivy_db.py" "${SUNDAY_TRIVY_CACHE:-${SUNDAY_HOME:-$HOME/.sunday-release}/trivy-cache}"
echo "[demo] sample app committed to $work ($(git -C "$work" rev-parse --short HEAD))"
"$top/.venv/bin/sunday-release" validate --repo "$work"
"$top/.venv/bin/sunday-release" ci --repo "$work" --ref main
registry=localhost:5000
sha=$(git -C "$work" rev-parse HEAD)
for service in backend frontend; do
  echo "[demo] published $registry/sunday/$service:sha-$sha for: $(curl -fsS \
    -H 'Accept: application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json' \
    "http://$registry/v2/sunday/$service/manifests/sha-$sha" | "$top/.venv/bin/python" -c \
    'import json, sys; print(", ".join(m["platform"]["os"] + "/" + m["platform"]["architecture"] for m in json.load(sys.stdin)["manifests"]))')"
done
echo "[demo] arm64 backend image: uname -m = $(/usr/bin/docker run --rm --platform linux/arm64 --entrypoint uname \
  "$registry/sunday/backend:sha-$sha" -m)"
"$top/.venv/bin/sunday-release" cd --env staging --version "$sha" --repo "$work"
# some traffic for Prometheus to measure: once it has found and scraped the new replicas (it counts what they serve
# from its first scrape on), 40 requests over 4 s, then two more scrapes (every 2 s)
sleep 5
for _ in $(seq 1 40); do curl -fsS -o /dev/null http://127.0.0.1:8081/api/boards; sleep 0.1; done
sleep 5
"$top/.venv/bin/sunday-release" status --env staging
echo "[demo] GET http://127.0.0.1:8081/api/boards -> $(curl -fsS http://127.0.0.1:8081/api/boards)"
echo "[demo] GET http://127.0.0.1:8081/ -> $(curl -fsS http://127.0.0.1:8081/ | grep -o '<title>[^<]*</title>')"
echo "[demo] staging stays up at http://127.0.0.1:8081; the Prefect UI is at http://127.0.0.1:4200 (it asks for the auth string in ${SUNDAY_HOME:-$HOME/.sunday-release}/server/api-auth); Prometheus at http://127.0.0.1:${SUNDAY_PROMETHEUS_PORT:-9090}"
