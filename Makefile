# AI Platform gateway: the two commands a new user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install proto check-proto lint-proto breaking-proto proto-baseline lint typecheck pytest clean

run: $(STAMP) ## Start the gateway with its demo services (AIP_ADDRESS, default 127.0.0.1:50051)
	$(PY) -m server

test: $(STAMP) lint-proto breaking-proto check-proto lint typecheck pytest ## Everything CI checks

install: $(STAMP)

# Re-install when the project's dependencies change.
$(STAMP): pyproject.toml tests/plugin_package/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required, found " + sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing into $(VENV) (log: $(VENV)/install.log) ..."
	@$(PY) -m pip install --upgrade pip -e '.[dev]' ./tests/plugin_package > $(VENV)/install.log 2>&1 \
		|| { tail -n 40 $(VENV)/install.log; echo "pip install failed; the whole log is $(VENV)/install.log"; exit 1; }
	touch $(STAMP)

proto: $(STAMP) ## Regenerate the Python stubs in generated/ from protos/
	cd protos && ../$(PY) -m grpc_tools.protoc -I. --python_out=../generated --pyi_out=../generated \
		--grpc_python_out=../generated $$(find . -name '*.proto' | sed 's|^\./||')

# Fails when the committed stubs differ from what protoc makes of the protos.
check-proto: $(STAMP)
	@tmp=$$(mktemp -d) && \
	(cd protos && ../$(PY) -m grpc_tools.protoc -I. --python_out=$$tmp --pyi_out=$$tmp \
		--grpc_python_out=$$tmp $$(find . -name '*.proto' | sed 's|^\./||')) && \
	stale=$$(cd $$tmp && find . -name '*.py' -o -name '*.pyi' | while read -r f; do \
		cmp -s "$$f" "$(CURDIR)/generated/$$f" || echo "generated/$${f#./}"; done); \
	rm -rf $$tmp; \
	if [ -n "$$stale" ]; then echo "Stale generated stubs (run 'make proto' and commit):"; echo "$$stale"; exit 1; fi; \
	echo "generated/ matches protos/"

lint-proto: $(STAMP)
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code

# The API as last released, as a buf image (YAML, so that a refresh reads as a diff; no comments,
# which no compatibility rule reads). A committed file rather than git history: CI's clone may be
# shallow, and the baseline is the last *release*, not the last commit, so fields added since
# can still change before they ship.
PROTO_BASELINE := .ci/proto-baseline.yaml

# Fails when protos/ would break a caller built against the baseline, by buf.yaml's `breaking`
# rules. FILE, not WIRE_JSON: callers compile generated code (Go, Python's per-file modules, Node
# loading the .proto), and WIRE_JSON lets a deleted RPC or service, or a type moved between files,
# through.
breaking-proto: $(STAMP)
	$(BIN)/buf breaking --against $(PROTO_BASELINE)

# Run when a release is cut, and commit the file. It refuses a breaking change: a baseline only
# moves forward compatibly (a break is a new package, aiplatform.v2, beside v1).
proto-baseline: $(STAMP) ## Record protos/ as the released API that breaking-proto checks against
	@if [ -e $(PROTO_BASELINE) ]; then $(BIN)/buf breaking --against $(PROTO_BASELINE) \
		|| { echo "protos/ breaks $(PROTO_BASELINE): not recorded"; exit 1; }; fi
	$(BIN)/buf build --exclude-source-info -o $(PROTO_BASELINE)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# Not part of `make test`: starts the gateway, a fake upstream, baselines and load generators on
# 127.0.0.1 and prints a Markdown table (benchmarks/README.md). `make bench BENCH_ARGS=--quick`.
.PHONY: bench
bench: $(STAMP) ## Benchmark the gateway against a minimal relay (benchmarks/out/results.json)
	$(PY) -m benchmarks $(BENCH_ARGS)
