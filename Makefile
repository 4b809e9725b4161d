# alloy — build, test, demo and benchmark entry points.
#   make          build/alloy and build/liballoy.a
#   make test     dependencies, build, every test (unit, reference, CLI)
#   make demo     dependencies, build, a small merge with two methods
#   make asan     the tests under AddressSanitizer + UBSan
#   make bench    benchmarks (generates its models once under $(BENCH_DIR))

CC      ?= cc
BUILD   ?= build
PKGS    := openblas lapacke yaml-0.1 libcjson libpcre2-8
# full-width vectors where the CPU has AVX-512 (gcc defaults to 256 bits
# there); no effect on AVX2-only machines
OPT     ?= -O2 -march=native -mprefer-vector-width=512
CFLAGS  ?=
CFLAGS  += -std=c11 $(OPT) -fno-trapping-math -g -Wall -Wextra -Werror -D_GNU_SOURCE -fopenmp \
           -Iinclude -Isrc $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -lpthread
LDFLAGS += -fopenmp

LIB_SRC := $(shell find src -name '*.c' ! -path 'src/cli/*' | sort)
CLI_SRC := $(sort $(wildcard src/cli/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

.PHONY: all deps test unit demo asan bench clean

all: $(BUILD)/alloy $(BUILD)/liballoy.a

deps:
	@scripts/install-deps.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/liballoy.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/alloy: $(CLI_OBJ) $(BUILD)/liballoy.a
	$(CC) $(LDFLAGS) $(CLI_OBJ) $(BUILD)/liballoy.a $(LDLIBS) -o $@

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/liballoy.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) $< $(BUILD)/liballoy.a $(LDLIBS) -lcmocka -o $@

unit: $(UNIT_BIN)
	@fail=0; for t in $(UNIT_BIN); do $$t || fail=1; done; exit $$fail

test: deps
	@$(MAKE) --no-print-directory all unit
	@BUILD=$(BUILD) tests/run.sh

demo: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) scripts/demo.sh

asan: deps
	@$(MAKE) --no-print-directory BUILD=build-asan OPT="-O1 -march=native -mprefer-vector-width=512 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" LDFLAGS="-fopenmp -fsanitize=address,undefined" all unit
	@BUILD=build-asan ASAN_OPTIONS=detect_leaks=1 tests/run.sh

bench: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) bench/run.sh

clean:
	rm -rf build build-asan

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)
