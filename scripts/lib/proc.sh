# shellcheck shell=bash
# Background-process handling shared by the service libraries (kafka.sh, registry.sh).
#
#   proc_alive <pid>                                   alive and not a zombie
#   proc_pid <pidfile> <marker>
#       prints the pid recorded in <pidfile> if it is alive and its command line contains <marker>
#       (a guard against pid reuse: e.g. the state directory the process was started for)
#   proc_stop <pidfile> <pid> <signal> <timeout_s> <label>
#       send <signal>, wait up to <timeout_s>, escalate to SIGKILL, then remove <pidfile>
#   proc_down <state_dir> <pidfile_name> <marker_format> <signal> <timeout_s> <label>
#       stop the process of a state directory (nothing to do when there is none): the marker is
#       <marker_format> with %s replaced by the absolute state directory. The `*_down` (TERM) and
#       `*_kill` (KILL) of kafka.sh and registry.sh are this.

proc_alive() {
  local st
  [[ -r "/proc/$1/stat" ]] || return 1
  st="$(sed -n 's/^[0-9]* (.*) \([A-Z]\) .*/\1/p' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

proc_pid() {
  local pid
  [[ -f "$1" ]] || return 1
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  proc_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -F -q -- "$2" || return 1
  printf '%s' "$pid"
}

proc_down() {
  local state="$1" pidfile marker pid
  [[ -d "$state" ]] || return 0
  state="$(cd "$state" && pwd)"
  pidfile="$state/$2"
  # shellcheck disable=SC2059  # the format is the caller's, with one %s for the state directory
  marker="$(printf -- "$3" "$state")"
  pid="$(proc_pid "$pidfile" "$marker")" || { rm -f "$pidfile"; return 0; }
  proc_stop "$pidfile" "$pid" "$4" "$5" "$6"
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
