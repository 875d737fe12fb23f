# shellcheck shell=bash
# A throwaway Redis on loopback for tests, from Debian's `redis-server` package.
#
#   redis_install, redis_up <state_dir>, redis_down <state_dir>, redis_kill <state_dir>,
#   redis_start_again <state_dir>
#
# <state_dir>/env gets: export CAMPAIGN_TEST_REDIS_URL=redis://127.0.0.1:<port>/0

redis_install() {
    command -v redis-server >/dev/null 2>&1 && return 0
    echo "installing Redis from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq redis-server >&2
}

_redis_start() {
    local state="$1" port
    port="$(cat "$state/redis.port")"
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --daemonize yes \
        --pidfile "$state/redis.pid" --logfile "$state/redis.log" --dir "$state" \
        --maxmemory 128mb --maxmemory-policy volatile-lru
    for _ in $(seq 1 100); do
        redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.1
    done
    echo "redis did not start; see $state/redis.log" >&2
    return 1
}

redis_up() {
    local state
    state="$(mkdir -p "$1" && cd "$1" && pwd)"
    redis_install
    [ -f "$state/redis.port" ] || python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' >"$state/redis.port"
    _redis_start "$state"
    echo "export CAMPAIGN_TEST_REDIS_URL=redis://127.0.0.1:$(cat "$state/redis.port")/0" >>"$state/env"
}

redis_down() {
    local state="$1"
    [ -f "$state/redis.pid" ] || return 0
    redis-cli -p "$(cat "$state/redis.port")" shutdown nosave >/dev/null 2>&1 || redis_kill "$state"
    rm -f "$state/redis.pid"
}

redis_kill() {
    local state="$1"
    [ -f "$state/redis.pid" ] && kill -9 "$(cat "$state/redis.pid")" 2>/dev/null || true
    rm -f "$state/redis.pid"
}

redis_start_again() { _redis_start "$1"; }
