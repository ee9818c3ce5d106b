#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the test suite and benchmarks.
#
#   scripts/pg_test_server.sh start   install the Debian server if missing, init, start, print URL
#   scripts/pg_test_server.sh url     print the URL of the running server
#   scripts/pg_test_server.sh stop    stop it
#
# State lives in .cache/postgres. The server trusts loopback connections and runs with
# fsync off: it holds test data only. Its buffers (512 MB) hold the indexes of a ledger of a
# few million events, as a production server's would, so benchmarks measure the ledger's
# work rather than an undersized cache.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.cache/postgres"
data="$state/data"
db=crm_ledger_test

die() { echo "pg_test_server: $*" >&2; exit 1; }

pg_bin() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    [ "$(id -u)" = 0 ] || die "PostgreSQL server binaries not found; install the Debian 'postgresql' package"
    echo "pg_test_server: installing the Debian postgresql package" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 \
      || die "apt-get install postgresql failed"
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  echo "$bin"
}

# PostgreSQL refuses to run as root: use the 'postgres' account the package creates.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

running() { [ -f "$state/url" ] && as_owner "$(pg_bin)/pg_ctl" -D "$data" status >/dev/null 2>&1; }

start() {
  local bin port
  bin=$(pg_bin)
  if running; then cat "$state/url"; return; fi
  mkdir -p "$state/sock"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "no 'postgres' user; install the Debian 'postgresql' package"
    chown postgres "$state" "$state/sock"
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    as_owner "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-sync >"$state/initdb.log" 2>&1 \
      || die "initdb failed; see $state/initdb.log"
  fi
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_owner "$bin/pg_ctl" -D "$data" -l "$state/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $state/sock -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c shared_buffers=512MB -c max_wal_size=4GB" \
    start >/dev/null || die "the server did not start; see $state/server.log"
  "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAtc \
    "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 \
    || "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc "CREATE DATABASE $db" >/dev/null
  echo "postgresql://postgres@127.0.0.1:$port/$db" >"$state/url"
  cat "$state/url"
}

stop() {
  [ -f "$data/PG_VERSION" ] || return 0
  as_owner "$(pg_bin)/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
  rm -f "$state/url"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) running || die "not running; run scripts/pg_test_server.sh start"; cat "$state/url" ;;
  *) die "usage: $0 start|url|stop" ;;
esac
