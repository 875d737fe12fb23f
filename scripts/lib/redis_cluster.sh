# shellcheck shell=bash
# A throwaway Redis Cluster on loopback for tests: 3 masters and 3 replicas (one each), Debian's
# `redis-server --cluster-enabled yes`, joined by `redis-cli --cluster create`.
#
#   redis_cluster_up <state_dir>, redis_cluster_down <state_dir>,
#   redis_cluster_kill <state_dir> <node>, redis_cluster_start_again <state_dir> <node>
#
# Nodes are 0..5 (each in <state_dir>/<node>/); which ones are masters changes with failovers.
# <state_dir>/env gets: export CAMPAIGN_TEST_REDIS_CLUSTER_URL=redis://127.0.0.1:<port of node 0>/0
# A master is replaced by its replica about 2 s after it stops answering (cluster-node-timeout).

REDIS_CLUSTER_NODES=6

_redis_cluster_node_start() {
    local dir="$1/$2" port
    port="$(cat "$dir/port")"
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --daemonize yes \
        --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 1000 \
        --cluster-replica-validity-factor 0 --repl-diskless-sync-delay 0 \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" \
        --maxmemory 64mb --maxmemory-policy volatile-lru
    for _ in $(seq 1 100); do
        redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.1
    done
    echo "redis cluster node $2 did not start; see $dir/redis.log" >&2
    return 1
}

# A free port P <= 55535 with P + 10000 free too (the cluster bus listens there).
_redis_cluster_free_port() {
    python3 -c '
import random, socket
for _ in range(1000):
    port = random.randint(20000, 55535)
    try:
        for p in (port, port + 10000):
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))
    except OSError:
        continue
    print(port)
    break
else:
    raise SystemExit("no free port pair")'
}

redis_cluster_up() {
    local state node addresses=() port
    state="$(mkdir -p "$1" && cd "$1" && pwd)"
    redis_install
    for node in $(seq 0 $((REDIS_CLUSTER_NODES - 1))); do
        mkdir -p "$state/$node"
        [ -f "$state/$node/port" ] || _redis_cluster_free_port >"$state/$node/port"
        _redis_cluster_node_start "$state" "$node"
        addresses+=("127.0.0.1:$(cat "$state/$node/port")")
    done
    port="$(cat "$state/0/port")"
    if ! redis-cli -p "$port" cluster info | grep -q 'cluster_state:ok'; then
        redis-cli --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes >"$state/create.log" 2>&1 ||
            { echo "redis cluster create failed; see $state/create.log" >&2; return 1; }
    fi
    for _ in $(seq 1 200); do
        redis-cli -p "$port" cluster info | grep -q 'cluster_state:ok' && break
        sleep 0.1
    done
    redis-cli -p "$port" cluster info | grep -q 'cluster_state:ok' ||
        { echo "redis cluster not ok; see $state/*/redis.log" >&2; return 1; }
    # every master has its replica, in sync, before anyone relies on a failover
    for _ in $(seq 1 300); do
        _redis_cluster_replicas_in_sync "$state" && break
        sleep 0.1
    done
    _redis_cluster_replicas_in_sync "$state" || { echo "redis cluster replicas not in sync" >&2; return 1; }
    echo "export CAMPAIGN_TEST_REDIS_CLUSTER_URL=redis://127.0.0.1:$port/0" >>"$state/env"
}

_redis_cluster_replicas_in_sync() {
    local state="$1" node synced=0
    for node in $(seq 0 $((REDIS_CLUSTER_NODES - 1))); do
        redis-cli -p "$(cat "$state/$node/port")" info replication 2>/dev/null | grep -q 'master_link_status:up' &&
            synced=$((synced + 1))
    done
    [ "$synced" -ge $((REDIS_CLUSTER_NODES / 2)) ]
}

redis_cluster_down() {
    local state="$1" node
    for node in $(seq 0 $((REDIS_CLUSTER_NODES - 1))); do
        [ -f "$state/$node/redis.pid" ] || continue
        redis-cli -p "$(cat "$state/$node/port")" shutdown nosave >/dev/null 2>&1 || redis_cluster_kill "$state" "$node"
        rm -f "$state/$node/redis.pid"
    done
}

redis_cluster_kill() {
    local dir="$1/$2"
    [ -f "$dir/redis.pid" ] && kill -9 "$(cat "$dir/redis.pid")" 2>/dev/null || true
    rm -f "$dir/redis.pid"
}

redis_cluster_start_again() { _redis_cluster_node_start "$1" "$2"; }
