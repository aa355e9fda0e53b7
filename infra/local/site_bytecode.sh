#!/usr/bin/env bash
# Compile a venv's site-packages to bytecode, or unpack what an earlier venv compiled from the very same files.
#   bash infra/local/site_bytecode.sh .venv
#
# Where PYTHONDONTWRITEBYTECODE is set Python keeps nothing it compiles, so every module of a venv without .pyc
# files is compiled again in every process. Compiling the ~14 700 files of site-packages takes 17 s on 2 cores,
# and every new clone needs it. uv installs by hard links from its cache, so two venvs of one requirements.lock
# hold the same source files (hard links, so with the same modification times and sizes: exactly what Python
# checks before it uses a .pyc). Their .pyc files are kept once under ~/.cache/sunday-release/bytecode, keyed by the
# bytecode version and the (path, mtime, size) of every linked source, and unpacked (about 1 s) into a venv whose
# linked sources match. The files of this venv alone (pip and setuptools from `python -m venv`, the editable
# finder that names this clone) are compiled each time; where uv copies instead of linking, that is every file.
set -euo pipefail

venv=${1:?usage: site_bytecode.sh VENV}
python="$(cd "$venv/bin" && pwd)/python"  # absolute: the compiles below run from inside site-packages
site=$("$python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
cache="${XDG_CACHE_HOME:-$HOME/.cache}/sunday-release/bytecode"
keep=3  # archives kept (about 280 MB each): the newest used

key=$( {
  "$python" -c 'import importlib.util; print(importlib.util.MAGIC_NUMBER.hex())'
  cd "$site" && find . -name '*.py' -links +1 ! -name '__editable__*' -printf '%p %T@ %s\n' | LC_ALL=C sort
} | sha256sum | cut -c1-32)
archive="$cache/$key.tar"

# Files that are not valid Python (test data some packages ship) fail to compile: Python never imports them, and
# uv's --compile-bytecode skips them the same way. compileall leaves a .pyc that matches its source as it is.
compile() { "$python" -m compileall -q -j 0 --invalidation-mode timestamp "$@" > /dev/null || true; }

if [[ -f "$archive" ]] && tar -xf "$archive" -C "$site"; then
  touch "$archive"  # recently used: kept by the pruning below
  (cd "$site" && find . -name '*.py' \( -links 1 -o -name '__editable__*' \) | compile -i -)
  exit 0
fi

compile "$site"

mkdir -p "$cache"
partial=$(mktemp "$cache/.partial.XXXXXX")
trap 'rm -f "$partial"' EXIT
(cd "$site" && find . -path '*/__pycache__/*.pyc' -print0 | tar --null -cf "$partial" -T -)
mv -f "$partial" "$archive"  # whole or not at all: a venv never unpacks a half-written archive
ls -1t "$cache"/*.tar | tail -n +$((keep + 1)) | xargs -r rm -f
