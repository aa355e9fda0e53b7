#!/usr/bin/env bash
# The demo: copy the sample app into a throwaway git repository and run CI on it.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/sunday-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp -a "$top/app/." "$work/"
git -C "$work" init -q -b main
git -C "$work" -c user.name=demo -c user.email=demo@sunday.invalid add -A
git -C "$work" -c user.name=demo -c user.email=demo@sunday.invalid commit -q -m "sample app"
echo "[demo] sample app committed to $work ($(git -C "$work" rev-parse --short HEAD))"
"$top/.venv/bin/sunday-release" validate --repo "$work"
"$top/.venv/bin/sunday-release" ci --repo "$work" --ref main
