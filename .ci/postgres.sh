#!/usr/bin/env bash
# Install (if needed) and start a throw-away PostgreSQL server on loopback for the multi-machine tests.
# Prints the storage URL on stdout. Idempotent: an already running server is reused.
set -euo pipefail
PORT="${BATCHTUNE_PG_PORT:-54329}"
DATA="${BATCHTUNE_PG_DATA:-/tmp/batchtune-pg}"
URL="postgresql://batchtune:batchtune-ci-pw@127.0.0.1:${PORT}/batchtune"

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(bindir)" ]; then
  echo "installing PostgreSQL from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi
BIN="$(bindir)"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if ! as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  rm -rf "$DATA"; mkdir -p "$DATA"
  [ "$(id -u)" = 0 ] && chown postgres: "$DATA"
  pw="$(mktemp)"; echo "postgres-ci-pw" > "$pw"; chmod 644 "$pw"
  as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=scram-sha-256 --pwfile="$pw" >/dev/null
  rm -f "$pw"
  as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA -c max_connections=200" start >/dev/null
  export PGPASSWORD=postgres-ci-pw
  psql -h 127.0.0.1 -p "$PORT" -U postgres -q -c "CREATE ROLE batchtune LOGIN PASSWORD 'batchtune-ci-pw'" >&2
  psql -h 127.0.0.1 -p "$PORT" -U postgres -q -c "CREATE DATABASE batchtune OWNER batchtune" >&2
fi
echo "$URL"
