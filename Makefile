# make demo: install what is missing, build, run the replicate-then-share demo.
# make test: install (PostgreSQL included), build, run every C++ and Python test: the C++
# tests under ASan + UBSan (all) and under TSan (the concurrency suites), pytest on the
# Release module.
VENV ?= .venv
PY := $(VENV)/bin/python
# The editable install's build tree (pyproject.toml) also builds the C++ tests.
CPP_BUILD := build/editable
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: all deps build build-py build-cpp demo test test-cpp test-py sanitize tsan fuzz fuzz-build fuzz-merge bench bench-s3 bench-manifest bench-serve bench-storage clean

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

# Two pytest workers: many tests wait on copies, subprocesses and servers, not on the CPU.
# Tests marked `serial` (pyproject.toml) run alone first (exit 5: none is marked), so that
# the run closes on the main pass's count.
PYTEST_WORKERS ?= 2
test-py: build-py
	$(PY) -m pytest -q -m serial tests/python || [ $$? -eq 5 ]
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not serial" tests/python

# make test runs the C++ tests under the sanitizers only: the same tests as test-cpp, with
# more checks, and no Release build of them to wait for (pytest covers the Release module).
test: sanitize tsan test-py

# The sanitizer builds (docs/reliability.md, "Sanitizers"): Debug, C++ tests only, unity
# batches of 8 sources (the shared headers are compiled once per batch, not once per file),
# line tables only (-g1: reports still name file and line; a build takes ~10% less; -O1
# was tried: the tests run faster but a build takes twice as long).
SAN_CMAKE := -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-g1 \
	-DIMAGERELAY_BUILD_PYTHON=OFF -DIMAGERELAY_BUILD_TESTS=ON -DCMAKE_UNITY_BUILD=ON \
	-DCMAKE_UNITY_BUILD_BATCH_SIZE=8

# ASan + UBSan: every C++ test; a leak, a bad access or undefined behaviour fails the run.
sanitize: deps
	@cmake -S . -B build/asan $(SAN_CMAKE) -DIMAGERELAY_SANITIZE=ON >/dev/null
	@cmake --build build/asan --target imagerelay_tests
	ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		$(PY) tests/python/pg_server.py run -- build/asan/imagerelay_tests --gtest_brief=1

# TSan: the suites whose code runs threads (worker pool, running work, background threads,
# lease, catalog threads and processes, change notifier, transfer crew, import, export,
# digest, sweep, the stores' parallel paths, the engine, the block index and its log's
# checkpointer). tests/tsan.supp: libraries' own.
TSAN_SUITES := BackgroundThreadsTest WorkerPoolTest RunningWorkTest LeaseTest CatalogTest \
	CatalogOpenTest CatalogProcessTest ChangeNotifierTest TransferTest TokenBucketTest \
	ImageIoTest ImporterTest DigesterTest SweeperTest SweepTest PackStoreTest LocalStoreTest \
	BlockManifestTest IntegrityTest S3ClientTest EngineTest DeltaBlocksTest \
	WalCheckpointerTest BlockIndexTest
space := $(subst ,, )
TSAN_FILTER := $(subst $(space),:,$(addsuffix .*,$(strip $(TSAN_SUITES))))
tsan: deps
	@cmake -S . -B build/tsan $(SAN_CMAKE) -DIMAGERELAY_TSAN=ON >/dev/null
	@cmake --build build/tsan --target imagerelay_tests
	TSAN_OPTIONS="suppressions=$(CURDIR)/tests/tsan.supp halt_on_error=1 second_deadlock_stack=1" \
		$(PY) tests/python/pg_server.py run -- \
		build/tsan/imagerelay_tests --gtest_brief=1 --gtest_filter='$(TSAN_FILTER)'

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

# Issue #12's storage study: ten versions of the ext4 chain under other block schemes,
# computed offline (~20 min); its modules (zstandard, numpy) and the zstd CLI installed here.
bench-storage: deps
	@command -v zstd >/dev/null || (apt-get update -qq && apt-get install -y -qq zstd)
	@$(PY) -m pip install -q zstandard numpy 2>&1 | grep -v "^$$" || true
	$(PY) bench/storage_schemes.py --chain-dir build/bench-chain --light-chain-dir build/bench-chain-light

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
