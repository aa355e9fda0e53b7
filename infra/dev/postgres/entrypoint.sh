#!/bin/sh
# On a new volume: a password of its own (/data/password, 0600: read by `dev up` with `docker exec`) and a cluster
# whose superuser is `dev` with it (`dev up` makes the declared database). Then postgres, PID 1. As postgres.
set -eu
BIN=/usr/lib/postgresql/15/bin
PGDATA=/data/pgdata
if [ ! -s /data/password ]; then
  (umask 077 && od -An -N18 -tx1 /dev/urandom | tr -d ' \n' > /data/password.new)
  mv /data/password.new /data/password
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  rm -rf "$PGDATA" && install -d -m 700 "$PGDATA"
  "$BIN/initdb" -D "$PGDATA" -U dev \
    --pwfile=/data/password --auth-local=peer --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
fi
# a development database: durability traded for speed (a crash of the machine may lose the last writes)
exec "$BIN/postgres" -D "$PGDATA" \
  -c listen_addresses='*' -c unix_socket_directories=/tmp -c fsync=off -c synchronous_commit=off \
  -c full_page_writes=off
