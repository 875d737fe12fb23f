# shellcheck shell=bash
# A real single-node Apache Kafka (KRaft, broker+controller in one JVM) on loopback,
# for tests and local runs. Source this file; it defines functions only and is safe
# under `set -euo pipefail`.
#
#   kafka_fetch                    jars into ${CAMPAIGN_CACHE_DIR:-~/.cache/campaign-service}/kafka-<ver>/libs (once)
#   kafka_up <state_dir>           start (fresh: pick ports, write config, format; existing: reuse),
#                                  wait until ready, create $KAFKA_TOPICS, write <state_dir>/env
#   kafka_down <state_dir>         SIGTERM, bounded wait, then SIGKILL
#   kafka_kill <state_dir>         SIGKILL (chaos)
#   kafka_start_again <state_dir>  restart with the same config, ports and data, wait until ready
#   kafka_create_topics <state_dir> name:partitions...   create topics (idempotent), wait for leaders
#   kafka_is_running <state_dir>   exit status only
#   kafka_java <state_dir> <main-class> args...   run a tool class from the jars (quiet logging)
#
# <state_dir>/env gets:  export KAFKA_BROKER=127.0.0.1:<port>
# Files in <state_dir>: server.properties, log4j2.properties, cluster.id, data/, kafka.log, kafka.pid, env
#
# Tunables (environment): KAFKA_VERSION (must be one the pom resolves, default 4.4.0),
# CAMPAIGN_CACHE_DIR, KAFKA_TOPICS, KAFKA_HEAP_OPTS, KAFKA_EXTRA_JVM_OPTS,
# KAFKA_EXTRA_CONFIG (lines appended to server.properties on a fresh state dir),
# KAFKA_READY_TIMEOUT (s, default 90), KAFKA_STOP_TIMEOUT (s, default 30), KAFKA_JAVA.

_KAFKA_SH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=proc.sh
source "$_KAFKA_SH_DIR/proc.sh"
_KAFKA_REPO_ROOT="$(cd "$_KAFKA_SH_DIR/../.." && pwd)"

_kafka_version() { printf '%s' "${KAFKA_VERSION:-4.4.0}"; }
_kafka_cache_root() { printf '%s' "${CAMPAIGN_CACHE_DIR:-${HOME:-/root}/.cache/campaign-service}"; }
kafka_home() { printf '%s/kafka-%s' "$(_kafka_cache_root)" "$(_kafka_version)"; }
kafka_libs_dir() { printf '%s/libs' "$(kafka_home)"; }
_kafka_java_bin() {
  if [[ -n "${KAFKA_JAVA:-}" ]]; then printf '%s' "$KAFKA_JAVA"
  elif [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]]; then printf '%s' "$JAVA_HOME/bin/java"
  else printf 'java'; fi
}
_kafka_log() { printf '[kafka.sh] %s\n' "$*" >&2; }
_kafka_now() { date +%s; }

# Source of a small admin helper (one JVM: wait for the broker, create topics, wait for leaders).
# Compiled once into the cache by kafka_fetch.
_kafka_helper_source() {
  cat <<'JAVA'
import java.util.*;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.errors.TopicExistsException;

/** usage: CampaignKafkaAdmin <bootstrap> <timeout_s> [topic:partitions ...] */
public class CampaignKafkaAdmin {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        long deadline = System.currentTimeMillis() + Long.parseLong(args[1]) * 1000L;
        Map<String, Integer> want = new LinkedHashMap<>();
        for (int i = 2; i < args.length; i++) {
            String[] p = args[i].split(":");
            want.put(p[0], p.length > 1 ? Integer.parseInt(p[1]) : 1);
        }
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "10000");
        props.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, "200");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
        Throwable last = null;
        try (Admin admin = Admin.create(props)) {
            while (System.currentTimeMillis() < deadline) {
                try {
                    if (admin.describeCluster().nodes().get(5, TimeUnit.SECONDS).isEmpty())
                        throw new IllegalStateException("no broker registered yet");
                    Set<String> existing = admin.listTopics().names().get(5, TimeUnit.SECONDS);
                    List<NewTopic> missing = new ArrayList<>();
                    for (Map.Entry<String, Integer> e : want.entrySet())
                        if (!existing.contains(e.getKey()))
                            missing.add(new NewTopic(e.getKey(), e.getValue(), (short) 1));
                    if (!missing.isEmpty()) {
                        for (Map.Entry<String, ? extends org.apache.kafka.common.KafkaFuture<Void>> r :
                                admin.createTopics(missing).values().entrySet()) {
                            try {
                                r.getValue().get(10, TimeUnit.SECONDS);
                                System.out.println("created topic " + r.getKey());
                            } catch (ExecutionException ex) {
                                if (!(ex.getCause() instanceof TopicExistsException)) throw ex;
                            }
                        }
                    }
                    boolean ok = true;
                    if (!want.isEmpty()) {
                        Map<String, TopicDescription> d =
                            admin.describeTopics(want.keySet()).allTopicNames().get(5, TimeUnit.SECONDS);
                        for (TopicDescription td : d.values())
                            for (TopicPartitionInfo pi : td.partitions())
                                if (pi.leader() == null || pi.leader().isEmpty()) ok = false;
                    }
                    if (ok) { System.out.println("kafka ready"); return; }
                    last = new IllegalStateException("partitions without leader");
                } catch (ExecutionException ex) {
                    last = ex.getCause();
                } catch (Exception ex) {
                    last = ex;
                }
                Thread.sleep(250);
            }
        }
        System.err.println("kafka not ready before timeout: " + last);
        System.exit(1);
    }
}
JAVA
}

# Fingerprint of what the cache was built from: the pom, the version and the helper.
_kafka_fingerprint() {
  { cat "$_KAFKA_REPO_ROOT/tools/kafka/pom.xml"; _kafka_version; _kafka_helper_source; } | sha256sum | cut -d' ' -f1
}

_kafka_fetch_locked() {
  local home libs marker fp tmp mvnlog
  home="$(kafka_home)"; libs="$home/libs"; marker="$home/.complete"
  fp="$(_kafka_fingerprint)" || return 1
  if [[ -f "$marker" && "$(cat "$marker")" == "$fp" && -d "$libs" ]]; then
    return 0
  fi
  _kafka_log "fetching Kafka $(_kafka_version) jars into $libs"
  rm -f "$marker"
  rm -rf "$libs" "$home/helper" "$home/libs.tmp"
  mkdir -p "$home"
  tmp="$home/libs.tmp"; mvnlog="$home/fetch.log"
  if ! mvn -B -q -Dstyle.color=never -f "$_KAFKA_REPO_ROOT/tools/kafka/pom.xml" \
      -Dkafka.version="$(_kafka_version)" \
      dependency:copy-dependencies -DoutputDirectory="$tmp" >"$mvnlog" 2>&1; then
    _kafka_log "mvn failed, see $mvnlog:"; tail -n 40 "$mvnlog" >&2
    return 1
  fi
  if ! compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null; then
    _kafka_log "kafka_2.13 jar missing after mvn (see $mvnlog)"; return 1
  fi
  mv "$tmp" "$libs"
  if command -v javac >/dev/null 2>&1; then
    mkdir -p "$home/helper/src"
    _kafka_helper_source >"$home/helper/src/CampaignKafkaAdmin.java"
    if ! javac -nowarn -cp "$libs/*" -d "$home/helper" "$home/helper/src/CampaignKafkaAdmin.java" >>"$mvnlog" 2>&1; then
      _kafka_log "javac of the admin helper failed (see $mvnlog); falling back to TopicCommand"
      rm -rf "$home/helper"
    fi
  fi
  printf '%s\n' "$fp" >"$marker"
  _kafka_log "fetched Kafka $(_kafka_version) ($(find "$libs" -name '*.jar' | wc -l) jars)"
}

kafka_fetch() {
  local root
  root="$(_kafka_cache_root)"
  mkdir -p "$root" || return 1
  # flock so that concurrent callers (parallel test jobs) download once.
  (
    flock -w 900 9 || { _kafka_log "timed out waiting for $root/kafka-$(_kafka_version).lock"; exit 1; }
    _kafka_fetch_locked
  ) 9>"$root/kafka-$(_kafka_version).lock"
}

_kafka_pick_ports() {  # prints two distinct free loopback ports
  python3 - <<'PY'
import socket
socks = []
for _ in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

_kafka_port_open() {  # <port>
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

_kafka_broker_port() {  # from listeners=PLAINTEXT://127.0.0.1:<p>,CONTROLLER://...
  sed -n 's#^listeners=PLAINTEXT://127\.0\.0\.1:\([0-9]*\),.*#\1#p' "$1/server.properties" | tail -n 1
}

_kafka_pid_alive() { proc_alive "$1"; }

# The broker of a state directory is the java whose command line names its config.
_KAFKA_MARKER='%s/server.properties'
_kafka_pid() {  # prints pid if the broker of this state dir is alive
  # shellcheck disable=SC2059  # the marker is a format
  proc_pid "$1/kafka.pid" "$(printf "$_KAFKA_MARKER" "$1")"
}

kafka_is_running() { _kafka_pid "$(cd "${1:?usage: kafka_is_running <state_dir>}" 2>/dev/null && pwd)" >/dev/null; }

_kafka_write_config() {  # <state> <broker_port> <controller_port>
  local state="$1" bp="$2" cp="$3"
  cat >"$state/server.properties" <<EOF
# generated by scripts/lib/kafka.sh
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cp
listeners=PLAINTEXT://127.0.0.1:$bp,CONTROLLER://127.0.0.1:$cp
advertised.listeners=PLAINTEXT://127.0.0.1:$bp,CONTROLLER://127.0.0.1:$cp
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$state/data
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# after a SIGKILL the restarted node waits for the old incarnation's session to expire
# (DUPLICATE_BROKER_REGISTRATION) before it serves: keep that short (default 9 s)
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=4000
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
EOF
  if [[ -n "${KAFKA_EXTRA_CONFIG:-}" ]]; then
    printf '%s\n' "$KAFKA_EXTRA_CONFIG" >>"$state/server.properties"
  fi
  cat >"$state/log4j2.properties" <<'EOF'
status = error
name = campaign-kafka
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRefs = out
rootLogger.appenderRef.out.ref = STDOUT
logger.req.name = kafka.request.logger
logger.req.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
EOF
  cat >"$state/tools-log4j2.properties" <<'EOF'
status = error
name = campaign-kafka-tools
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ERROR
rootLogger.appenderRefs = err
rootLogger.appenderRef.err.ref = STDERR
EOF
}

# Run a class from the Kafka jars with quiet logging, e.g.
#   kafka_java "$state" org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BROKER" --list
kafka_java() {
  local state="${1:?usage: kafka_java <state_dir> <main-class> args...}"; shift
  local cfg="$state/tools-log4j2.properties" cp
  cp="$(kafka_libs_dir)/*"
  if [[ -d "$(kafka_home)/helper" ]]; then cp="$(kafka_home)/helper:$cp"; fi
  "$(_kafka_java_bin)" -Xms32m -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto \
    -Djava.awt.headless=true ${cfg:+"-Dlog4j2.configurationFile=$cfg"} -cp "$cp" "$@"
}

_kafka_format() {  # <state>
  local state="$1" cid
  rm -rf "$state/data"
  if [[ ! -s "$state/cluster.id" ]]; then
    cid="$(kafka_java "$state" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)" || return 1
    [[ -n "$cid" ]] || { _kafka_log "could not generate a cluster id"; return 1; }
    printf '%s\n' "$cid" >"$state/cluster.id"
  fi
  cid="$(cat "$state/cluster.id")"
  if ! kafka_java "$state" kafka.tools.StorageTool format --standalone \
      -t "$cid" -c "$state/server.properties" >"$state/format.log" 2>&1; then
    _kafka_log "storage format failed:"; cat "$state/format.log" >&2; return 1
  fi
}

_kafka_spawn() {  # <state>: start the JVM in the background, record its pid
  local state="$1" pid
  # where this run's output starts in the (appended) kafka.log
  stat -c %s "$state/kafka.log" 2>/dev/null >"$state/kafka.log.offset" || echo 0 >"$state/kafka.log.offset"
  rm -f "$state/kafka.pid"
  # Started from a subshell that exits at once: the JVM is not a job of the caller's shell
  # (no "Killed" job notices, no zombie in long-lived shells; init reaps it).
  # shellcheck disable=SC2086
  (
    "$(_kafka_java_bin)" ${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m} \
      -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$state/log4j2.properties" \
      ${KAFKA_EXTRA_JVM_OPTS:-} \
      -cp "$(kafka_libs_dir)/*" kafka.Kafka "$state/server.properties" \
      </dev/null >>"$state/kafka.log" 2>&1 &
    printf '%s\n' "$!" >"$state/kafka.pid"
  )
  pid="$(cat "$state/kafka.pid")"
  # Until the forked shell has exec'd java, /proc/<pid>/cmdline is the shell's: wait (bounded)
  # for the exec so that _kafka_pid does not mistake a starting broker for a dead one.
  local i
  for (( i = 0; i < 200; i++ )); do
    _kafka_pid_alive "$pid" || return 0
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -F -q -- "$state/server.properties"; then return 0; fi
    sleep 0.05
  done
}

_kafka_run_log() {  # output of the current run only
  local off
  off="$(cat "$1/kafka.log.offset" 2>/dev/null || echo 0)"
  tail -c "+$(( off + 1 ))" "$1/kafka.log" 2>/dev/null || true
}

# Wait (bounded) until this broker has started (it logs that only after binding its
# listeners, so a foreign process on the port does not fool us) and accepts connections.
# Returns 2 if it died of a port clash.
_kafka_wait_listening() {  # <state> <deadline_epoch>
  local state="$1" deadline="$2" port
  port="$(_kafka_broker_port "$state")"
  while :; do
    if ! _kafka_pid "$state" >/dev/null; then
      if _kafka_run_log "$state" | grep -q 'Address already in use'; then return 2; fi
      _kafka_log "broker exited during start-up; last log lines:"; tail -n 30 "$state/kafka.log" >&2
      return 1
    fi
    if _kafka_run_log "$state" | grep -q 'Kafka Server started' && _kafka_port_open "$port"; then return 0; fi
    if (( $(_kafka_now) >= deadline )); then
      _kafka_log "broker not listening on 127.0.0.1:$port before timeout"; tail -n 30 "$state/kafka.log" >&2
      return 1
    fi
    sleep 0.2
  done
}

# Wait until the broker serves metadata and the given topics exist with leaders (creating them).
_kafka_wait_ready() {  # <state> <deadline_epoch> [topic:partitions ...]
  local state="$1" deadline="$2" port left spec name parts; shift 2
  port="$(_kafka_broker_port "$state")"
  left=$(( deadline - $(_kafka_now) )); (( left > 1 )) || left=1
  if [[ -f "$(kafka_home)/helper/CampaignKafkaAdmin.class" ]]; then
    kafka_java "$state" CampaignKafkaAdmin "127.0.0.1:$port" "$left" "$@" >&2 || return 1
    return 0
  fi
  # fallback without the helper: TopicCommand, one JVM per call
  until kafka_java "$state" org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" --list >/dev/null 2>&1; do
    if (( $(_kafka_now) >= deadline )); then _kafka_log "broker not ready before timeout"; return 1; fi
    sleep 0.5
  done
  for spec in "$@"; do
    name="${spec%%:*}"; parts="${spec#*:}"; [[ "$parts" != "$spec" ]] || parts=1
    until kafka_java "$state" org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" \
        --create --if-not-exists --topic "$name" --partitions "$parts" --replication-factor 1 >/dev/null; do
      if (( $(_kafka_now) >= deadline )); then _kafka_log "could not create topic $name"; return 1; fi
      sleep 0.5
    done
  done
}

_kafka_write_env() {
  local state="$1"
  printf 'export KAFKA_BROKER=127.0.0.1:%s\n' "$(_kafka_broker_port "$state")" >"$state/env"
}

kafka_up() {
  local state="${1:?usage: kafka_up <state_dir>}" deadline ports bp cp attempt rc fresh=0 t0
  # shellcheck disable=SC2206
  local topics=(${KAFKA_TOPICS-customer.created:3 vip_tier.assigned:3 vip_tier.updated:3 customer.created.dlq:1 points.recorded:3 points.recorded.dlq:1 customer.deleted:3 customer.deleted.dlq:1 vip_tier.customer_erased:3 vip_tier.downgrade_scheduled:3})
  t0="$(_kafka_now)"
  kafka_fetch || return 1
  mkdir -p "$state" || return 1
  state="$(cd "$state" && pwd)"
  if _kafka_pid "$state" >/dev/null; then
    _kafka_log "already running (pid $(cat "$state/kafka.pid")) for $state"; return 1
  fi
  deadline=$(( $(_kafka_now) + ${KAFKA_READY_TIMEOUT:-90} ))
  if [[ -f "$state/server.properties" && -f "$state/data/meta.properties" ]]; then
    _kafka_spawn "$state"
    rc=0; _kafka_wait_listening "$state" "$deadline" || rc=$?
    if (( rc == 2 )); then
      _kafka_log "the ports of the existing $state are taken; remove that dir for a fresh broker"
    fi
    (( rc == 0 )) || { kafka_kill "$state" || true; return 1; }
  else
    fresh=1
    for attempt in 1 2 3; do
      ports="$(_kafka_pick_ports)" || return 1
      read -r bp cp <<<"$ports"
      _kafka_write_config "$state" "$bp" "$cp"
      _kafka_format "$state" || return 1
      : >"$state/kafka.log"
      _kafka_spawn "$state"
      rc=0; _kafka_wait_listening "$state" "$deadline" || rc=$?
      if (( rc == 0 )); then break; fi
      kafka_kill "$state" || true
      if (( rc == 2 && attempt < 3 )); then _kafka_log "port clash, retrying with new ports"; continue; fi
      return 1
    done
  fi
  if ! _kafka_wait_ready "$state" "$deadline" "${topics[@]}"; then
    _kafka_log "last broker log lines:"; tail -n 30 "$state/kafka.log" >&2
    kafka_kill "$state" || true
    return 1
  fi
  _kafka_write_env "$state"
  _kafka_log "Kafka up on 127.0.0.1:$(_kafka_broker_port "$state") (pid $(cat "$state/kafka.pid"), $(( $(_kafka_now) - t0 ))s$([[ $fresh == 1 ]] && printf ', fresh'))"
}

kafka_create_topics() {  # <state_dir> name:partitions ...
  local state="${1:?usage: kafka_create_topics <state_dir> name:partitions...}"; shift
  state="$(cd "$state" && pwd)" || return 1
  _kafka_wait_ready "$state" $(( $(_kafka_now) + ${KAFKA_READY_TIMEOUT:-90} )) "$@"
}

kafka_start_again() {
  local state="${1:?usage: kafka_start_again <state_dir>}" deadline
  state="$(cd "$state" && pwd)" || return 1
  [[ -f "$state/server.properties" && -f "$state/data/meta.properties" ]] || {
    _kafka_log "no formatted broker in $state (run kafka_up first)"; return 1; }
  if _kafka_pid "$state" >/dev/null; then _kafka_log "already running"; return 0; fi
  deadline=$(( $(_kafka_now) + ${KAFKA_READY_TIMEOUT:-90} ))
  _kafka_spawn "$state"
  if ! _kafka_wait_listening "$state" "$deadline"; then
    _kafka_log "restart failed (ports of $state taken?)"; kafka_kill "$state" || true; return 1
  fi
  # ready = metadata served and the default topics (those that exist) have leaders again
  # shellcheck disable=SC2206
  local topics=(${KAFKA_TOPICS-customer.created:3 vip_tier.assigned:3 vip_tier.updated:3 customer.created.dlq:1 points.recorded:3 points.recorded.dlq:1 customer.deleted:3 customer.deleted.dlq:1 vip_tier.customer_erased:3 vip_tier.downgrade_scheduled:3})
  if ! _kafka_wait_ready "$state" "$deadline" "${topics[@]}"; then
    _kafka_log "broker restarted but not ready; last log lines:"; tail -n 30 "$state/kafka.log" >&2
    kafka_kill "$state" || true
    return 1
  fi
  _kafka_write_env "$state"
}

kafka_down() { proc_down "${1:?usage: kafka_down <state_dir>}" kafka.pid "$_KAFKA_MARKER" TERM "${KAFKA_STOP_TIMEOUT:-30}" kafka.sh; }
kafka_kill() { proc_down "${1:?usage: kafka_kill <state_dir>}" kafka.pid "$_KAFKA_MARKER" KILL 10 kafka.sh; }
