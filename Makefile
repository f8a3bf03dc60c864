# make demo: install what is missing, build, run the replicate-then-share demo.
# make test: install (PostgreSQL included), build, run every C++ and Python test.
VENV ?= .venv
PY := $(VENV)/bin/python
# The editable install's build tree (pyproject.toml) also builds the C++ tests.
CPP_BUILD := build/editable
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: all deps build build-py build-cpp demo test test-cpp test-py sanitize fuzz fuzz-build fuzz-merge bench bench-s3 bench-manifest bench-serve clean

all: build

deps:
	@./scripts/install-deps.sh

# Editable install with a persistent build dir: a change rebuilds only what it touches.
build-py: deps
	@$(PY) -m pip install -q --no-build-isolation -e . 2>&1 | grep -v "^$$" || true
	@$(PY) -c "import imagerelay" || (echo "build of the Python package failed" && exit 1)

build-cpp: build-py
	@cmake --build $(CPP_BUILD) --target imagerelay_tests

build: build-cpp

demo: build-py
	$(VENV)/bin/imagerelay demo

# The catalog tests run against SQLite and against a PostgreSQL server started for them
# (tests/python/pg_server.py: initdb in a temporary directory, 127.0.0.1, stopped at the end).
test-cpp: build-cpp
	$(PY) tests/python/pg_server.py run -- $(CPP_BUILD)/imagerelay_tests --gtest_brief=1

test-py: build-py
	$(PY) -m pytest -q tests/python

test: test-cpp test-py

# ASan + UBSan build of the C++ tests.
sanitize: deps
	@cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DIMAGERELAY_SANITIZE=ON \
		-DIMAGERELAY_BUILD_PYTHON=OFF -DIMAGERELAY_BUILD_TESTS=ON >/dev/null
	@cmake --build build/asan
	build/asan/imagerelay_tests --gtest_brief=1

# libFuzzer targets of tests/fuzz (clang, ASan + UBSan): each runs FUZZ_SECONDS on its kept
# corpus; what it finds new stays in build/fuzz/corpus, crashes in build/fuzz/crashes.
FUZZ_SECONDS ?= 60
FUZZ_BUILD := build/fuzz
fuzz-build:
	@./scripts/install-deps.sh --fuzz
	@cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_CXX_COMPILER=clang++ \
		-DCMAKE_BUILD_TYPE=RelWithDebInfo -DIMAGERELAY_FUZZ=ON -DIMAGERELAY_BUILD_PYTHON=OFF \
		-DIMAGERELAY_BUILD_TESTS=OFF >/dev/null
	@cmake --build $(FUZZ_BUILD) -j2

fuzz: fuzz-build
	@scripts/run-fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

# Folds what make fuzz found into the kept corpora, minimised (libFuzzer -merge=1).
fuzz-merge: fuzz-build
	@scripts/run-fuzz.sh $(FUZZ_BUILD) merge

bench: build-py
	$(PY) bench/run.py

# The S3 benchmark's contenders: rclone (Debian) and the AWS CLI (PyPI, into the venv).
bench-s3: build-py
	@command -v rclone >/dev/null || (apt-get update -qq && apt-get install -y -qq rclone)
	@$(PY) -m pip install -q awscli 2>&1 | grep -v "^$$" || true
	$(PY) bench/s3_bench.py --size-mib 1024 --runs 3

# imagerelay serve under load: 64 BCC SDK clients for 30 s, copies running, vs in-process.
bench-serve: build-py
	$(PY) bench/serve_bench.py

# How manifests scale: open, digest and walk of a 2, 20 and 200 GiB image's block list.
bench-manifest: build-py
	@cmake --build $(CPP_BUILD) --target imagerelay_manifest_bench
	@{ echo "# Manifests that scale (bench/manifest_bench.cpp)"; echo; \
	   echo "\`make bench-manifest\` on $$(date -u +%F), $$(nproc) cores; the manifest is written"; \
	   echo "to $(CPP_BUILD) and dropped from the page cache before the cold open."; echo; \
	   $(CPP_BUILD)/imagerelay_manifest_bench --dir $(CPP_BUILD); } > bench/MANIFEST_RESULTS.md
	@cat bench/MANIFEST_RESULTS.md

clean:
	rm -rf build $(VENV)
