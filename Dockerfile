# syntax=docker/dockerfile:1
#
# Hivemind: the rate limit service, built from this source tree.
#
#   docker build -t hivemind-ratelimit .
#   docker run --rm -p 8080:8080 -p 8081:8081 -p 7946:7946 hivemind-ratelimit
#   docker run --rm -v $(pwd)/config.yaml:/etc/hivemind/config.yaml -v $(pwd)/config:/etc/hivemind/rules ...
#
# Ports: 8081 gRPC (Envoy's rate limit service), 8080 admin HTTP (/healthcheck, /ready,
# /metrics, the status page at /), 7946 the peer mesh. Config: /etc/hivemind/config.yaml;
# rules: every *.yaml in /etc/hivemind/rules/ (hot reloaded). docs/deployment.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: install the package and its dependencies into a virtual environment --------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    HIVEMIND_BUILD_CACHE=/opt/hivemind/native
# A C compiler and libnghttp2's headers, for the native HTTP/2 core of the RLS server
# (server.transport auto/nghttp2); the run stage needs only the library. Debian's
# packages of this base image's release, not pinned (they follow its security updates).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libnghttp2-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/hivemind
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# xds-protos ships an old copy of opentelemetry-proto's modules into the same folder;
# reinstall opentelemetry-proto's own files over it (the version pip resolved).
RUN /opt/hivemind/bin/pip install . \
    && /opt/hivemind/bin/pip install --force-reinstall --no-deps \
       "opentelemetry-proto==$(/opt/hivemind/bin/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')" \
    && /opt/hivemind/bin/python -c "from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope" \
    && /opt/hivemind/bin/hivemind --version \
    && /opt/hivemind/bin/python -m hivemind_ratelimit.rls.h2build

# -- run: the virtual environment, the default config and rules, a non-root user --------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="hivemind-ratelimit" \
      org.opencontainers.image.description="Distributed rate limit service for Envoy: a peer-to-peer mesh of sidecars, no Redis." \
      org.opencontainers.image.licenses="Apache-2.0"
# libnghttp2 for the native core built above (in $HIVEMIND_BUILD_CACHE, found by its
# hash of the source and the Python version, which both stages share).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnghttp2-14 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 hivemind \
    && useradd --system --uid 10001 --gid hivemind --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin hivemind
COPY --from=build /opt/hivemind /opt/hivemind
COPY deploy/docker/config.yaml /etc/hivemind/config.yaml
COPY config/ratelimit.yaml /etc/hivemind/rules/ratelimit.yaml
# Relative paths in a config file resolve against /etc/hivemind, and config/ points at the
# rules: the repository's own config.yaml (config_path: config/ratelimit.yaml) works as is.
RUN ln -s rules /etc/hivemind/config
WORKDIR /etc/hivemind
ENV PATH=/opt/hivemind/bin:$PATH \
    HIVEMIND_BUILD_CACHE=/opt/hivemind/native \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080 8081 7946
# 200 while serving; 500 while starting or draining. No curl in the image: Python asks,
# on the admin port the environment sets (HIVEMIND_SERVER__HTTP_PORT), else 8080.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/healthcheck' % os.environ.get('HIVEMIND_SERVER__HTTP_PORT', '8080'), timeout=2)"]
# Exec form: hivemind is PID 1 and gets SIGTERM itself. It stops taking calls, drains
# (server.drain_timeout), hands its counts to its peers, announces its leave and exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["hivemind"]
CMD ["serve", "--config", "/etc/hivemind/config.yaml"]
