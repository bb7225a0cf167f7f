# One command to run the service, one to run every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN_STAMP  := $(VENV)/.run-stamp
TEST_STAMP := $(VENV)/.test-stamp

.PHONY: run test lint bench clean proto demo system-deps native-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The nghttp2 transport's C core (src/hivemind_ratelimit/rls/h2core.c) is compiled once
# into ~/.cache/hivemind-ratelimit at install (and rebuilt on first use if it changed).
# xds-protos ships an old copy of opentelemetry-proto's modules into the same folder;
# whichever installs last wins. Reinstall opentelemetry-proto's own files over it.
FIX_OTEL_PROTO = $(BIN)/pip install --quiet --force-reinstall --no-deps \
	"opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"

$(RUN_STAMP): pyproject.toml | $(BIN)/python native-deps
	$(BIN)/pip install --quiet -e .
	$(FIX_OTEL_PROTO)
	$(BIN)/python -m hivemind_ratelimit.rls.h2build || echo "warning: server.transport nghttp2 unavailable"
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python native-deps
	$(BIN)/pip install --quiet -e '.[test]'
	$(FIX_OTEL_PROTO)
	$(BIN)/python -m hivemind_ratelimit.rls.h2build || echo "warning: server.transport nghttp2 unavailable"
	touch $@ $(RUN_STAMP)

# Native needs of the nghttp2 transport: libnghttp2's headers, a C compiler and Python's
# headers to build its core; h2load for its soak test and the benchmarks. Installed with
# apt-get when missing and run as root (as CI is); otherwise said what is missing.
native-deps:
	@missing=""; \
	test -f /usr/include/nghttp2/nghttp2.h || missing="$$missing libnghttp2-dev"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	command -v h2load >/dev/null 2>&1 || missing="$$missing nghttp2-client"; \
	$(PYTHON) -c "import os,sys,sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
		|| missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing (Debian) for the nghttp2 transport"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				--no-install-recommends $$missing >/dev/null; \
		else \
			echo "missing:$$missing (apt-get install$$missing): server.transport nghttp2 cannot be built"; \
		fi; \
	fi

run: $(RUN_STAMP)  ## the service on config.yaml (gRPC :8081, admin :8080)
	$(BIN)/hivemind serve --config config.yaml

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests bench deploy
	$(BIN)/ruff format --check src tests bench deploy
	$(BIN)/mypy

test: lint system-deps native-deps  ## every check and every test
	$(BIN)/hivemind check-config config/ratelimit.yaml
	$(BIN)/python -m pytest -q
	@echo "tests/integration again, on the grpcio transport (the default is nghttp2; tests/transport runs both):"
	HIVEMIND_TEST_TRANSPORT=grpcio $(BIN)/python -m pytest -q tests/integration

# Three Hivemind nodes, Envoy and a backend, as test/docker-compose.yaml, from processes
# (no Docker): Envoy on :10000, status pages on :18080-18082. Ctrl-C stops everything.
demo: $(TEST_STAMP)
	$(BIN)/python deploy/demo/twin.py

# Debian packages that tests drive: Chromium, for the status page test. Installed when
# missing and run as root (as CI is); otherwise that test is skipped and says why.
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian's chromium for the status page test"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				--no-install-recommends chromium fonts-liberation >/dev/null; \
		else \
			echo "chromium is missing (apt-get install chromium): the status page test will be skipped"; \
		fi; }

# ShouldRateLimit per transport with h2load, through Envoy, memory and scaling, latency at
# load, then garbage-collector stalls with many counters (about 18 minutes); tables in
# docs/performance.md, JSON in bench/results/.
bench: $(TEST_STAMP) native-deps
	$(BIN)/python bench/transport_bench.py
	$(BIN)/python bench/gc_pauses.py --json bench/results/gc_pauses.json

# Over-admission against a shared limit by consistency mode and sync interval, on 3 and
# 5 real nodes (about 5 minutes).
.PHONY: bench-mesh
bench-mesh: $(TEST_STAMP)
	$(BIN)/python bench/mesh_accuracy.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Regenerate the committed peer-protocol code from proto/ (needs grpcio-tools).
PROTO_OUT := src/hivemind_ratelimit/mesh/proto
proto: $(TEST_STAMP)
	$(BIN)/pip install --quiet grpcio-tools
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) \
		--grpc_python_out=$(PROTO_OUT) hivemind/mesh/v1/mesh.proto
	mv $(PROTO_OUT)/hivemind/mesh/v1/mesh_pb2*.py* $(PROTO_OUT)/ && rm -rf $(PROTO_OUT)/hivemind
	sed -i 's/^from hivemind.mesh.v1 import mesh_pb2/from hivemind_ratelimit.mesh.proto import mesh_pb2/' \
		$(PROTO_OUT)/mesh_pb2_grpc.py
