# Campaign Service image: multi-stage, slim, non-root.
#   docker build -t campaign-service:latest .
# The build stage resolves the locked dependencies with uv and builds the project as a wheel,
# whose hatch build hook (scripts/hatch_build_proto.py) generates the gRPC/protobuf code; the
# runtime stage gets only the virtualenv: no compiler, no uv, no sources, no generated-code tools.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# uv from PyPI, pinned; the same version the scripts use.
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# Dependencies first: this layer stays cached while only the code changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY proto ./proto
COPY scripts/hatch_build_proto.py ./scripts/hatch_build_proto.py
COPY src ./src
# --no-editable: the package (with its generated code) is copied into the venv, not linked to /src.
RUN uv sync --frozen --no-dev --no-editable \
    && /opt/venv/bin/python -c "import campaign_service.api.pb, campaign_service.cli"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 campaign \
    && useradd --system --uid 10001 --gid campaign --home-dir /var/lib/campaign --create-home \
       --shell /usr/sbin/nologin campaign
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CAMPAIGN_DATA_DIR=/var/lib/campaign/data
USER 10001:10001
WORKDIR /var/lib/campaign
# gRPC, HTTP (/health, /ready, /metrics)
EXPOSE 50058 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2)"]
# SIGTERM starts the graceful stop (not ready, drain in-flight RPCs, flush, close).
STOPSIGNAL SIGTERM
ENTRYPOINT ["campaign-service"]
CMD ["serve"]
