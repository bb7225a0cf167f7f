# One command to run the service, one to run every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN_STAMP  := $(VENV)/.run-stamp
TEST_STAMP := $(VENV)/.test-stamp

.PHONY: run test lint bench clean proto

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)  ## the service on config.yaml (gRPC :8081, admin :8080)
	$(BIN)/hivemind serve --config config.yaml

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: lint  ## every check and every test
	$(BIN)/hivemind check-config config/ratelimit.yaml
	$(BIN)/python -m pytest -q

bench: $(TEST_STAMP)
	$(BIN)/python bench/rls_throughput.py

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
