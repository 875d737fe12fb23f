# shellcheck shell=bash
# Background-process handling shared by the service libraries (kafka.sh, registry.sh).
#
#   proc_alive <pid>                                   alive and not a zombie
#   proc_stop <pidfile> <pid> <signal> <timeout_s> <label>
#       send <signal>, wait up to <timeout_s>, escalate to SIGKILL, then remove <pidfile>

proc_alive() {
  local st
  [[ -r "/proc/$1/stat" ]] || return 1
  st="$(sed -n 's/^[0-9]* (.*) \([A-Z]\) .*/\1/p' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

proc_stop() {
  local pidfile="$1" pid="$2" sig="$3" timeout="$4" label="$5" deadline
  kill "-$sig" "$pid" 2>/dev/null || true
  deadline=$(( $(date +%s) + timeout ))
  while proc_alive "$pid"; do
    if (( $(date +%s) >= deadline )); then
      if [[ "$sig" == KILL ]]; then printf '[%s] pid %s survived SIGKILL?\n' "$label" "$pid" >&2; return 1; fi
      printf '[%s] pid %s did not stop in %ss after SIG%s; sending SIGKILL\n' "$label" "$pid" "$timeout" "$sig" >&2
      kill -KILL "$pid" 2>/dev/null || true
      sig=KILL; deadline=$(( $(date +%s) + 10 ))
    fi
    sleep 0.1
  done
  rm -f "$pidfile"
}
