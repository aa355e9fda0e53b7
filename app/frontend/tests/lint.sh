#!/bin/sh
# Lint for the frontend (runs in the test image, WORKDIR /src, as root):
#  1. `node --check` every .js/.mjs file (syntax errors fail the build);
#  2. `nginx -t` on nginx.conf with the document root it expects.
set -eu

cd "$(dirname "$0")/.."
status=0
count=0

for f in $(find public tests -type f \( -name '*.js' -o -name '*.mjs' \) | sort); do
    count=$((count + 1))
    if node --check "$f"; then
        echo "ok   node --check $f"
    else
        echo "FAIL node --check $f"
        status=1
    fi
done
if [ "$count" -eq 0 ]; then
    echo "FAIL no .js/.mjs files found"
    status=1
fi

# nginx -t parses the config and its includes (/etc/nginx/mime.types); it does not need the docroot.
if nginx -t -q -c "$(pwd)/nginx.conf" -g 'daemon off;'; then
    echo "ok   nginx -t nginx.conf"
else
    echo "FAIL nginx -t nginx.conf"
    status=1
fi

# Every interactive element the e2e tests rely on must keep its data-testid.
for id in board-name-input create-board item-title-input add-item delete-board error; do
    if ! grep -q "data-testid=\"$id\"" public/index.html; then
        echo "FAIL public/index.html lacks data-testid=\"$id\""
        status=1
    fi
done

exit "$status"
