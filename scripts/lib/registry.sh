# shellcheck shell=bash
# A real Confluent-compatible Schema Registry on loopback for tests and local runs:
# Apicurio Registry (Apache-2.0) from its Maven Central distribution, in-memory H2 storage,
# Confluent API under /apis/ccompat/v7. Source this file; it defines functions only and is
# safe under `set -euo pipefail`.
#
#   registry_fetch               unpack the app once into ${CAMPAIGN_CACHE_DIR:-~/.cache/campaign-service}/apicurio-registry-<ver>/
#   registry_up <state_dir>      pick free loopback ports, start, wait until ready, write <state_dir>/env
#   registry_down <state_dir>    SIGTERM, bounded wait, then SIGKILL
#   registry_kill <state_dir>    SIGKILL
#   registry_is_running <state_dir>
#
# <state_dir>/env gets:  export CAMPAIGN_SCHEMA_REGISTRY_URL=http://127.0.0.1:<port>/apis/ccompat/v7
# Files in <state_dir>: registry.log, registry.pid, registry.ports, env, tmp/
# Storage is in memory: schemas are gone after registry_down (ids restart at 1).
#
# Needs Java >= 21 (Apicurio 3.3 classes are Java 21): REGISTRY_JAVA, else $JAVA_HOME, else
# `java` on PATH, else the newest /usr/lib/jvm/*/bin/java that is >= 21.
# Tunables: APICURIO_VERSION (default 3.3.3), CAMPAIGN_CACHE_DIR, REGISTRY_HEAP_OPTS,
# REGISTRY_EXTRA_JVM_OPTS (e.g. -Dquarkus.http.access-log.enabled=true),
# REGISTRY_READY_TIMEOUT (s, default 90), REGISTRY_STOP_TIMEOUT (s, default 20).

_REGISTRY_SH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=proc.sh
source "$_REGISTRY_SH_DIR/proc.sh"
_REGISTRY_REPO_ROOT="$(cd "$_REGISTRY_SH_DIR/../.." && pwd)"

_registry_version() { printf '%s' "${APICURIO_VERSION:-3.3.3}"; }
_registry_cache_root() { printf '%s' "${CAMPAIGN_CACHE_DIR:-${HOME:-/root}/.cache/campaign-service}"; }
registry_home() { printf '%s/apicurio-registry-%s' "$(_registry_cache_root)" "$(_registry_version)"; }
_registry_log() { printf '[registry.sh] %s\n' "$*" >&2; }
_registry_now() { date +%s; }

_registry_fingerprint() {
  { cat "$_REGISTRY_REPO_ROOT/tools/registry/pom.xml"; _registry_version; } | sha256sum | cut -d' ' -f1
}

_registry_fetch_locked() {
  local home marker fp tmp mvnlog tgz
  home="$(registry_home)"; marker="$home/.complete"
  fp="$(_registry_fingerprint)" || return 1
  if [[ -f "$marker" && "$(cat "$marker")" == "$fp" && -f "$home/quarkus-app/quarkus-run.jar" ]]; then
    return 0
  fi
  _registry_log "fetching Apicurio Registry $(_registry_version) into $home"
  rm -f "$marker"
  rm -rf "$home/quarkus-app" "$home/tmp"
  mkdir -p "$home/tmp/dl" "$home/tmp/app"
  tmp="$home/tmp"; mvnlog="$home/fetch.log"
  if ! mvn -B -q -Dstyle.color=never -f "$_REGISTRY_REPO_ROOT/tools/registry/pom.xml" \
      -Dapicurio.version="$(_registry_version)" \
      dependency:copy-dependencies -DoutputDirectory="$tmp/dl" >"$mvnlog" 2>&1; then
    _registry_log "mvn failed, see $mvnlog:"; tail -n 40 "$mvnlog" >&2
    return 1
  fi
  tgz="$(find "$tmp/dl" -maxdepth 1 -name 'apicurio-registry-app-*-all.tar.gz' | head -n 1)"
  [[ -n "$tgz" ]] || { _registry_log "no apicurio-registry-app-*-all.tar.gz after mvn (see $mvnlog)"; return 1; }
  if ! tar -xzf "$tgz" -C "$tmp/app" >>"$mvnlog" 2>&1; then
    _registry_log "could not unpack $tgz"; return 1
  fi
  [[ -f "$tmp/app/quarkus-run.jar" ]] || { _registry_log "quarkus-run.jar missing in $tgz"; return 1; }
  mv "$tmp/app" "$home/quarkus-app"
  rm -rf "$tmp"
  printf '%s\n' "$fp" >"$marker"
  _registry_log "fetched Apicurio Registry $(_registry_version)"
}

registry_fetch() {
  local root
  root="$(_registry_cache_root)"
  mkdir -p "$root" || return 1
  (
    flock -w 900 9 || { _registry_log "timed out waiting for the fetch lock"; exit 1; }
    _registry_fetch_locked
  ) 9>"$root/apicurio-registry-$(_registry_version).lock"
}

_registry_java_major() {  # <java binary>: prints the major version
  local bin="$1" home rel v
  home="$(dirname "$(dirname "$(readlink -f "$(command -v "$bin" 2>/dev/null || printf '%s' "$bin")")")")"
  rel="$home/release"
  if [[ -f "$rel" ]]; then
    v="$(sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$rel")"
  fi
  if [[ -z "${v:-}" ]]; then
    v="$("$bin" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)"
  fi
  [[ "$v" == 1 ]] && v=8
  printf '%s' "${v:-0}"
}

registry_java() {  # prints a java binary >= 21
  local c best="" bestv=0 v
  if [[ -n "${REGISTRY_JAVA:-}" ]]; then printf '%s' "$REGISTRY_JAVA"; return 0; fi
  for c in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} "$(command -v java 2>/dev/null || true)"; do
    [[ -n "$c" && -x "$c" ]] || continue
    v="$(_registry_java_major "$c")"
    if (( v >= 21 )); then printf '%s' "$c"; return 0; fi
  done
  for c in /usr/lib/jvm/*/bin/java; do
    [[ -x "$c" ]] || continue
    v="$(_registry_java_major "$c")"
    if (( v >= 21 && v > bestv )); then best="$c"; bestv="$v"; fi
  done
  if [[ -n "$best" ]]; then printf '%s' "$best"; return 0; fi
  _registry_log "no Java >= 21 found (Apicurio Registry $(_registry_version) needs it); set REGISTRY_JAVA"
  return 1
}

_registry_pick_ports() {
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

_registry_pid_alive() { proc_alive "$1"; }

# The registry of a state directory is the java started with its state as a system property.
_REGISTRY_MARKER='-Dcampaign.registry.state=%s'
_registry_pid() {
  # shellcheck disable=SC2059  # the marker is a format
  proc_pid "$1/registry.pid" "$(printf -- "$_REGISTRY_MARKER" "$1")"
}

registry_is_running() { _registry_pid "$(cd "${1:?usage: registry_is_running <state_dir>}" 2>/dev/null && pwd)" >/dev/null; }

_registry_http_ok() {  # <url>: 2xx within 3 s
  if command -v curl >/dev/null 2>&1; then
    curl -sf -o /dev/null --max-time 3 "$1"
  else
    python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "$1" >/dev/null 2>&1
  fi
}

registry_up() {
  local state="${1:?usage: registry_up <state_dir>}" java ports hp mp deadline attempt pid t0 ready i
  t0="$(_registry_now)"
  registry_fetch || return 1
  java="$(registry_java)" || return 1
  mkdir -p "$state" || return 1
  state="$(cd "$state" && pwd)"
  if _registry_pid "$state" >/dev/null; then
    _registry_log "already running (pid $(cat "$state/registry.pid")) for $state"; return 1
  fi
  deadline=$(( $(_registry_now) + ${REGISTRY_READY_TIMEOUT:-90} ))
  mkdir -p "$state/tmp"
  for attempt in 1 2 3; do
    ports="$(_registry_pick_ports)" || return 1
    read -r hp mp <<<"$ports"
    printf 'http=%s\nmanagement=%s\n' "$hp" "$mp" >"$state/registry.ports"
    : >"$state/registry.log"
    rm -f "$state/registry.pid"
    # from a subshell that exits at once: not a job of the caller's shell (see kafka.sh)
    # shellcheck disable=SC2086
    (
      "$java" ${REGISTRY_HEAP_OPTS:--Xms64m -Xmx384m} -XX:+ExitOnOutOfMemoryError \
        -Dcampaign.registry.state="$state" \
        -Djava.io.tmpdir="$state/tmp" -Dvertx.cacheDirBase="$state/tmp/vertx-cache" \
        -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$hp" \
        -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$mp" \
        -Dquarkus.http.access-log.enabled=false \
        -Dapicurio.storage.kind=sql -Dapicurio.storage.sql.kind=h2 \
        -Dapicurio.datasource.jdbc.initial-size=2 -Dapicurio.datasource.jdbc.min-size=2 \
        -Dapicurio.datasource.jdbc.max-size=20 \
        -Dapicurio.storage.snapshot.location="$state/tmp" -Dapicurio.import.work-dir="$state/tmp" \
        ${REGISTRY_EXTRA_JVM_OPTS:-} \
        -jar "$(registry_home)/quarkus-app/quarkus-run.jar" \
        </dev/null >>"$state/registry.log" 2>&1 &
      printf '%s\n' "$!" >"$state/registry.pid"
    )
    pid="$(cat "$state/registry.pid")"
    # wait (bounded) for the forked shell to exec java, so _registry_pid recognises it
    for (( i = 0; i < 200; i++ )); do
      _registry_pid_alive "$pid" || break
      if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -F -q -- "-Dcampaign.registry.state=$state"; then break; fi
      sleep 0.05
    done
    ready=0
    while :; do
      if ! _registry_pid "$state" >/dev/null; then break; fi
      if _registry_http_ok "http://127.0.0.1:$hp/apis/ccompat/v7/subjects" \
         && _registry_http_ok "http://127.0.0.1:$mp/health/ready"; then ready=1; break; fi
      if (( $(_registry_now) >= deadline )); then break; fi
      sleep 0.25
    done
    if (( ready )); then break; fi
    if ! _registry_pid "$state" >/dev/null && grep -q 'Address already in use\|Port already bound\|BindException' "$state/registry.log" \
       && (( attempt < 3 )); then
      _registry_log "port clash, retrying with new ports"; continue
    fi
    _registry_log "registry not ready (see $state/registry.log); last lines:"; tail -n 30 "$state/registry.log" >&2
    registry_kill "$state" || true
    return 1
  done
  printf 'export CAMPAIGN_SCHEMA_REGISTRY_URL=http://127.0.0.1:%s/apis/ccompat/v7\n' "$hp" >"$state/env"
  _registry_log "Apicurio Registry up on http://127.0.0.1:$hp (pid $pid, $(( $(_registry_now) - t0 ))s)"
}

registry_down() {
  proc_down "${1:?usage: registry_down <state_dir>}" registry.pid "$_REGISTRY_MARKER" TERM "${REGISTRY_STOP_TIMEOUT:-20}" registry.sh
}
registry_kill() { proc_down "${1:?usage: registry_kill <state_dir>}" registry.pid "$_REGISTRY_MARKER" KILL 10 registry.sh; }
