#!/bin/sh
# On a new volume: a password of its own (/data/password, 0600: read by `dev up` with `docker exec`). Its config
# (/data/redis.conf, 0600: the password stays out of the process's arguments), then redis-server, PID 1. As redis.
set -eu
if [ ! -s /data/password ]; then
  (umask 077 && od -An -N18 -tx1 /dev/urandom | tr -d ' \n' > /data/password.new)
  mv /data/password.new /data/password
fi
(umask 077 && printf 'bind 0.0.0.0 ::\nprotected-mode no\nport 6379\ndir /data\nappendonly yes\nrequirepass %s\n' \
  "$(cat /data/password)" > /data/redis.conf)
exec redis-server /data/redis.conf
