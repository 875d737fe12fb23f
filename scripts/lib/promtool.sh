# shellcheck shell=bash
# Prometheus' `promtool` (Debian package `prometheus`) for checking alert rules and /metrics output.
#
#   promtool_install     apt-get install prometheus if no promtool is found (the daemon is not started)
#   promtool_rules       check deploy/prometheus/rules.yml and run its unit tests (deploy/prometheus/tests)

promtool_install() {
    command -v promtool >/dev/null 2>&1 && return 0
    echo "installing promtool from Debian's prometheus package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends prometheus >&2
    command -v promtool >/dev/null
}

promtool_rules() {
    local root="$1"
    promtool_install
    promtool check rules "$root/deploy/prometheus/rules.yml"
    promtool test rules "$root"/deploy/prometheus/tests/*.yml
}
