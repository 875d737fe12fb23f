# shellcheck shell=bash
# Load generators for bench/: ghz (proto-aware gRPC load, built from the Go module proxy) and
# h2load (Debian's nghttp2-client). Installed once into ${CAMPAIGN_CACHE_DIR:-~/.cache/campaign-service}.
#
#   ghz_install    -> prints the path of the ghz binary
#   h2load_install -> installs nghttp2-client if h2load is missing

GHZ_VERSION="${GHZ_VERSION:-v0.120.0}"

ghz_install() {
    local bin_dir="${CAMPAIGN_CACHE_DIR:-$HOME/.cache/campaign-service}/bin"
    if [ ! -x "$bin_dir/ghz-$GHZ_VERSION" ]; then
        command -v go >/dev/null 2>&1 || { echo "ghz needs Go (the machine's toolchain)" >&2; return 1; }
        echo "building ghz $GHZ_VERSION from the Go module proxy" >&2
        mkdir -p "$bin_dir"
        local tmp
        tmp="$(mktemp -d)"
        (cd "$tmp" && GOFLAGS=-mod=mod GOBIN="$tmp" go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION" >&2)
        mv "$tmp/ghz" "$bin_dir/ghz-$GHZ_VERSION"
        rm -rf "$tmp"
    fi
    printf '%s\n' "$bin_dir/ghz-$GHZ_VERSION"
}

h2load_install() {
    command -v h2load >/dev/null 2>&1 && return 0
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq nghttp2-client >&2
}
