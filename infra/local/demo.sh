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
echo "[demo] published: $(curl -fsS "http://$registry/v2/sunday/backend/tags/list")"
echo "[demo] arm64 backend image: uname -m = $(/usr/bin/docker run --rm --platform linux/arm64 --entrypoint uname \
  "$registry/sunday/backend:sha-$(git -C "$work" rev-parse HEAD)" -m)"
sha=$(git -C "$work" rev-parse HEAD)
"$top/.venv/bin/sunday-release" cd --env staging --version "$sha" --repo "$work"
"$top/.venv/bin/sunday-release" status --env staging
echo "[demo] GET http://127.0.0.1:8081/api/boards -> $(curl -fsS http://127.0.0.1:8081/api/boards)"
echo "[demo] GET http://127.0.0.1:8081/ -> $(curl -fsS http://127.0.0.1:8081/ | grep -o '<title>[^<]*</title>')"
echo "[demo] staging stays up at http://127.0.0.1:8081; the Prefect UI is at http://127.0.0.1:4200"
