# Thin driver over CMake: `make run`, `make test` on a fresh Debian 12 machine.
BUILD   ?= build
JOBS    ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all build deps run test sanitize fuzz lint sbom bench bench-quick bench-pipeline bench-gateway clean

all: build

deps:
	@scripts/deps.sh

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS)

# Configuring again is quick and refreshes the commit label (keel version, keel_build_info).
build: $(BUILD)/build.ninja
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) > /dev/null
	cmake --build $(BUILD) -j $(JOBS)

# Serve with the embedded defaults on 127.0.0.1:8080.
run: deps
	@$(MAKE) --no-print-directory build
	$(BUILD)/keel serve

# Every test: unit (cmocka), integration (real binary, real sockets), JSON conformance.
test: deps
	@$(MAKE) --no-print-directory build CMAKE_FLAGS="$(CMAKE_FLAGS)"
	scripts/checksrc.sh
	cd $(BUILD) && ctest --output-on-failure -j 2

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer (clang).
sanitize: deps
	CC=clang $(MAKE) --no-print-directory test BUILD=build-asan CMAKE_FLAGS="-DKEEL_SANITIZE=ON -DKEEL_WERROR=ON -DCMAKE_BUILD_TYPE=Debug"

# clang-tidy (.clang-tidy) and cppcheck over src/, include/, examples/, tests/tools/ with the
# compile database CMake writes; fails on any finding (a few minutes: clang-tidy's analyzer).
lint: deps
	@$(MAKE) --no-print-directory build CMAKE_FLAGS="$(CMAKE_FLAGS)"
	scripts/lint.sh $(BUILD)

# CycloneDX 1.5 SBOM of the Debian packages keel links and dlopen()s -> $(BUILD)/keel.cdx.json.
sbom: deps
	@$(MAKE) --no-print-directory build CMAKE_FLAGS="$(CMAKE_FLAGS)"
	python3 scripts/sbom.py $(BUILD)/keel $(BUILD)/keel.cdx.json

# Bounded libFuzzer runs over the committed corpora (FUZZ_SECONDS each).
FUZZ_SECONDS ?= 60
fuzz: deps
	CC=clang cmake -S . -B build-fuzz -G Ninja -DKEEL_FUZZ=ON -DKEEL_SANITIZE=ON -DKEEL_WERROR=ON
	cmake --build build-fuzz -j $(JOBS)
	scripts/fuzz.sh build-fuzz/fuzz $(FUZZ_SECONDS)

# Benchmarks: keel beside Go net/http, Rust hyper and nginx, then the gateway and pipeline parts
# -> docs/benchmarks.md.
# bench-quick: about a minute, one repetition, for development -> build/bench-quick/.
bench bench-quick: deps
	@$(MAKE) --no-print-directory build
	bench/setup.sh $(BUILD)/bench/peers
	KEEL_BENCH_BUILD=$(BUILD) python3 bench/run.py $(if $(filter bench-quick,$@),--quick --out $(BUILD)/bench-quick)

# Only the telemetry pipeline part (issue 5): its section of docs/benchmarks.md and the "pipeline"
# key of docs/benchmarks.json are replaced, the HTTP results kept (about 4 minutes).
bench-pipeline: deps
	@$(MAKE) --no-print-directory build
	bench/setup.sh $(BUILD)/bench/peers
	KEEL_BENCH_BUILD=$(BUILD) python3 bench/run.py --pipeline-only

# Only the API gateway part (issue 6): keel's reverse proxy beside nginx's proxy_pass to the same
# upstream; its section of docs/benchmarks.md and the "gateway" key of docs/benchmarks.json are
# replaced, the rest kept (about 5 minutes).
bench-gateway: deps
	@$(MAKE) --no-print-directory build
	bench/setup.sh $(BUILD)/bench/peers
	KEEL_BENCH_BUILD=$(BUILD) python3 bench/run.py --gateway-only

clean:
	rm -rf build build-asan build-fuzz build-gcc
