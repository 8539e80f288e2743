#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests: `.ci/postgres.sh start DIR` creates a cluster in
# DIR (owned by the `postgres` user when run as root, since initdb refuses root), starts it on a
# free loopback port with its Unix socket in DIR, and prints its URL; `.ci/postgres.sh stop DIR`
# stops it and removes DIR. With `start DIR PID`, a watchdog does the `stop` once process PID
# has ended (a test binary that starts a cluster cannot be trusted to clean up after a panic or a
# kill). `pause DIR` stops the server and keeps the cluster, `resume DIR` starts it again on the
# same port (tests of a database that goes away). Nothing outside DIR is touched.
#
# A test cluster does not fsync (`fsync=off`, `synchronous_commit=off`): its data is thrown away,
# and the suite runs many times faster. `AURA_PG_DURABLE=1` keeps PostgreSQL's defaults, for
# benchmarks that compare durable commits.
set -euo pipefail

durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
[ "${AURA_PG_DURABLE:-}" != 1 ] || durability=""

pg_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -n "$bin" ] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
    echo "$bin"
}

as_owner() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
    local dir=$1 watch=${2:-} bin port
    bin=$(pg_bin)
    mkdir -p "$dir"
    [ "$(id -u)" -ne 0 ] || chown postgres: "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
        || { echo "initdb failed (can the postgres user reach $dir?):" >&2; cat "$dir/initdb.log" >&2; exit 1; }
    # A port nobody listens on; pg_ctl fails on a port taken meanwhile, so try a few.
    for _ in 1 2 3 4 5 6 7 8; do
        port=$((20000 + RANDOM % 40000))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue
        if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 $durability" start >/dev/null; then
            if [ -n "$watch" ]; then
                setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec bash "$2" stop "$3"' \
                    watchdog "$watch" "$(readlink -f "$0")" "$dir" </dev/null >/dev/null 2>&1 &
            fi
            echo "$port" >"$dir/port"
            echo "postgres://postgres@127.0.0.1:$port/postgres"
            return 0
        fi
    done
    echo "could not start PostgreSQL; its log:" >&2
    cat "$dir/server.log" >&2 || true
    exit 1
}

# Stops the server but keeps the cluster (a database that goes away for a while).
pause() {
    local dir=$1
    as_owner "$(pg_bin)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
}

# Starts a paused cluster again on the same port.
resume() {
    local dir=$1 port
    port=$(cat "$dir/port")
    as_owner "$(pg_bin)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 $durability" start >/dev/null
}

stop() {
    local dir=$1 bin
    bin=$(pg_bin)
    [ ! -d "$dir/data" ] || as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}

case "${1:-}" in
    start) start "$2" "${3:-}" ;;
    stop) stop "$2" ;;
    pause) pause "$2" ;;
    resume) resume "$2" ;;
    *) echo "usage: $0 start DIR [PID] | stop DIR | pause DIR | resume DIR" >&2; exit 2 ;;
esac
