# shellcheck shell=bash
# A throwaway PostgreSQL cluster on loopback for tests, from Debian's `postgresql` package.
# PostgreSQL refuses to run as root, so the cluster runs as the unprivileged `postgres` user.
#
#   pg_install               apt-get install postgresql if no initdb is found
#   pg_up <state_dir>        initdb (once) + start on a free 127.0.0.1 port; writes <state_dir>/env
#   pg_down <state_dir>      fast shutdown
#   pg_kill <state_dir>      SIGKILL the postmaster (chaos)
#   pg_start_again <state_dir>
#
# <state_dir>/env gets: export CAMPAIGN_TEST_PG_DSN=postgresql://postgres@127.0.0.1:<port>/postgres

_pg_bin() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { printf '%s' "$d"; return 0; }
    done
    return 1
}

_pg_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

pg_install() {
    _pg_bin >/dev/null && return 0
    echo "installing PostgreSQL from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
    _pg_bin >/dev/null
}

_pg_start() {
    local state="$1" bin port
    bin="$(_pg_bin)"
    port="$(cat "$state/pg.port")"
    runuser -u postgres -- "$bin/pg_ctl" -D "$state/pgdata" -l "$state/postgres.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $state/pgsock -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null
}

pg_up() {
    local state bin port
    state="$(mkdir -p "$1" && cd "$1" && pwd)"
    pg_install
    bin="$(_pg_bin)"
    if [ ! -f "$state/pgdata/PG_VERSION" ]; then
        mkdir -p "$state/pgdata" "$state/pgsock"
        chown -R postgres "$state"
        runuser -u postgres -- "$bin/initdb" -D "$state/pgdata" -U postgres --auth=trust -E UTF8 >/dev/null
        _pg_free_port >"$state/pg.port"
    fi
    _pg_start "$state"
    port="$(cat "$state/pg.port")"
    echo "export CAMPAIGN_TEST_PG_DSN=postgresql://postgres@127.0.0.1:$port/postgres" >>"$state/env"
}

pg_down() {
    local state="$1"
    [ -f "$state/pgdata/postmaster.pid" ] || return 0
    runuser -u postgres -- "$(_pg_bin)/pg_ctl" -D "$state/pgdata" -m fast -w -t 30 stop >/dev/null 2>&1 || pg_kill "$state"
}

pg_kill() {
    local state="$1" pid
    pid="$(head -1 "$state/pgdata/postmaster.pid" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    # the children notice the postmaster is gone and exit; wait so the port frees
    for _ in $(seq 1 50); do pgrep -f "$state/pgdata" >/dev/null || break; sleep 0.1; done
    pkill -9 -f "$state/pgdata" 2>/dev/null || true
    rm -f "$state/pgdata/postmaster.pid"
}

pg_start_again() { _pg_start "$1"; }
