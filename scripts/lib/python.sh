# shellcheck shell=bash
# Sourced by scripts/*: a virtualenv with the locked dependencies and freshly generated protobuf code.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export UV_PROJECT_ENVIRONMENT="${UV_PROJECT_ENVIRONMENT:-$REPO_ROOT/.venv}"

python_env() {
    if ! command -v uv >/dev/null 2>&1; then
        if [ -x "$HOME/.local/bin/uv" ]; then
            export PATH="$HOME/.local/bin:$PATH"
        else
            echo "installing uv (Python package manager) from PyPI" >&2
            python3 -m pip install --quiet --user --disable-pip-version-check uv >&2
            export PATH="$HOME/.local/bin:$PATH"
        fi
    fi
    (cd "$REPO_ROOT" && uv sync --frozen --quiet --python python3.11)
    # On PATH before generating: protoc finds its plugins (protoc-gen-mypy) there.
    export PATH="$UV_PROJECT_ENVIRONMENT/bin:$PATH"
    (cd "$REPO_ROOT" && "$UV_PROJECT_ENVIRONMENT/bin/python" scripts/hatch_build_proto.py)
}
