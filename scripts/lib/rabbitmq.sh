# shellcheck shell=bash
# A throwaway RabbitMQ node on loopback for tests, from Debian's `rabbitmq-server` package, run as
# the package's unprivileged `rabbitmq` user. Everything of the node is in the state directory and
# on 127.0.0.1 only: its own epmd (Erlang's port mapper) on a free port, the AMQP listener and the
# Erlang distribution port; data (mnesia), logs, the Erlang cookie ($HOME) and the enabled plugins
# file (only rabbitmq_consistent_hash_exchange, which the event bus adapter uses; no management
# plugin). /etc/rabbitmq is not read. Stopping is SIGTERM to the node (a graceful shutdown), then
# epmd is stopped.
#
#   rabbitmq_install, rabbitmq_up <state_dir>, rabbitmq_down <state_dir>,
#   rabbitmq_kill <state_dir> (SIGKILL the node: chaos), rabbitmq_start_again <state_dir>
#
# <state_dir>/env gets: export CAMPAIGN_TEST_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:<port>/

_rabbitmq_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=proc.sh
source "$_rabbitmq_here/proc.sh"

_rabbitmq_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

rabbitmq_install() {
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && return 0
    echo "installing RabbitMQ from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    # The package's own service is not wanted (a container's policy-rc.d usually refuses it anyway).
    apt-get update -qq >&2 && apt-get install -y -qq rabbitmq-server >&2
}

# The environment of the node and of epmd: everything under the state directory, loopback only.
_rabbitmq_env() {
    local state="$1"
    printf '%s\n' \
        "HOME=$state/home" \
        "RABBITMQ_CONF_ENV_FILE=$state/rabbitmq-env.conf" \
        "RABBITMQ_CONFIG_FILE=$state/rabbitmq" \
        "RABBITMQ_ADVANCED_CONFIG_FILE=$state/advanced.config" \
        "RABBITMQ_ENABLED_PLUGINS_FILE=$state/enabled_plugins" \
        "RABBITMQ_NODENAME=rabbit-$(cat "$state/amqp.port")@localhost" \
        "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1" \
        "RABBITMQ_NODE_PORT=$(cat "$state/amqp.port")" \
        "RABBITMQ_DIST_PORT=$(cat "$state/dist.port")" \
        "RABBITMQ_MNESIA_BASE=$state/mnesia" \
        "RABBITMQ_LOG_BASE=$state/log" \
        "RABBITMQ_PID_FILE=$state/rabbitmq.pid" \
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}" \
        "ERL_EPMD_ADDRESS=127.0.0.1" \
        "ERL_EPMD_PORT=$(cat "$state/epmd.port")"
}

_rabbitmq_start() {
    local state="$1" port envs=()
    port="$(cat "$state/amqp.port")"
    mapfile -t envs < <(_rabbitmq_env "$state")
    # As the package's unprivileged user, by setpriv, which execs (runuser would stay the parent):
    # each background job's pid ($!) is then the process's own (the scripts exec down to beam.smp).
    if ! proc_pid "$state/epmd.pid" "$(cat "$state/epmd.port")" >/dev/null; then
        setpriv --reuid rabbitmq --regid rabbitmq --init-groups -- env "${envs[@]}" setsid epmd -address 127.0.0.1 -port "$(cat "$state/epmd.port")" \
            >>"$state/log/epmd.log" 2>&1 &
        echo $! >"$state/epmd.pid"
    fi
    setpriv --reuid rabbitmq --regid rabbitmq --init-groups -- env "${envs[@]}" setsid /usr/lib/rabbitmq/bin/rabbitmq-server \
        >>"$state/log/stdout.log" 2>&1 </dev/null &
    echo $! >"$state/wrapper.pid"  # a shell that waits for the node; the node writes rabbitmq.pid
    # Ready when the AMQP listener answers the protocol header (it opens once the node has booted).
    for _ in $(seq 1 600); do
        if python3 - "$port" <<'EOF' 2>/dev/null; then return 0; fi
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(b"AMQP\x00\x00\x09\x01")
s.settimeout(2)
sys.exit(0 if s.recv(8)[:1] == b"\x01" else 1)  # connection.start, a method frame
EOF
        proc_alive "$(cat "$state/wrapper.pid")" || break
        sleep 0.2
    done
    echo "rabbitmq did not start; see $state/log" >&2
    return 1
}

rabbitmq_up() {
    local state
    state="$(mkdir -p "$1" && cd "$1" && pwd)"
    rabbitmq_install
    if [ ! -f "$state/amqp.port" ]; then
        mkdir -p "$state/home" "$state/mnesia" "$state/log"
        _rabbitmq_free_port >"$state/amqp.port"
        _rabbitmq_free_port >"$state/dist.port"
        _rabbitmq_free_port >"$state/epmd.port"
        : >"$state/rabbitmq-env.conf"
        printf '%s\n' 'loopback_users.guest = true' 'log.console = false' 'log.file.level = warning' \
            >"$state/rabbitmq.conf"
        echo '[].' >"$state/advanced.config"
        echo '[rabbitmq_consistent_hash_exchange].' >"$state/enabled_plugins"
        chown -R rabbitmq "$state"
        chmod 755 "$state"
    fi
    _rabbitmq_start "$state"
    echo "export CAMPAIGN_TEST_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:$(cat "$state/amqp.port")/" >>"$state/env"
}

rabbitmq_down() {
    local state="$1"
    [ -d "$state" ] || return 0
    state="$(cd "$state" && pwd)"
    # The node's command line names its $HOME (the marker against pid reuse). SIGTERM to the
    # node itself is a graceful shutdown (the wrapper shell then exits too).
    proc_down "$state" rabbitmq.pid "%s/home" TERM 30 rabbitmq
    proc_down "$state" wrapper.pid "rabbitmq-server" TERM 10 rabbitmq-wrapper
    proc_down "$state" epmd.pid "-port $(cat "$state/epmd.port" 2>/dev/null)" TERM 5 epmd
}

rabbitmq_kill() {
    local state="$1"
    state="$(cd "$state" && pwd)"
    proc_down "$state" rabbitmq.pid "%s/home" KILL 10 rabbitmq
    proc_down "$state" wrapper.pid "rabbitmq-server" TERM 10 rabbitmq-wrapper
}

rabbitmq_start_again() { _rabbitmq_start "$(cd "$1" && pwd)"; }
