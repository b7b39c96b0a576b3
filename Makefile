# pintle: one non-recursive Makefile (STYLE §11).
#   make            build build/bin/*
#   make run        install deps, build, run the local stack (Ctrl-C stops it);
#                   GATEWAYS= PROCESSORS= ROUTERS= BATCHROUTERS= set the instances of each
#   make test       install deps, build, run unit + integration + e2e tests and the fuzz smoke
#   make asan       sanitizer build + C tests under it
#   make fuzz       build and run the request-parser fuzzer (FUZZ_SECONDS, default 60)
#   make bench      benchmarks (not part of make test)
#   make images     docker build of deploy/docker/* (not part of make test)
SHELL   := /bin/bash
BUILD   ?= build
PKGS    := libevent libpq json-c libcurl nanomsg libconfig zlib libcrypto
WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wformat=2 -Wno-unused-parameter -Wno-format-nonliteral -Wno-format-truncation
CC      ?= cc
OPT     ?= -O2
CFLAGS  := -std=gnu11 -D_GNU_SOURCE $(OPT) -g $(WARN) -I. -I$(BUILD)/gen $(shell pkg-config --cflags $(PKGS) 2>/dev/null) -MMD -MP
LDLIBS  := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -levent_extra -lm -pthread
ifdef SANITIZE
CFLAGS  += -O1 -fno-omit-frame-pointer -fsanitize=$(SANITIZE) -fno-sanitize-recover=all
LDFLAGS += -fsanitize=$(SANITIZE)
endif
ifeq ($(V),1)
Q :=
else
Q := @
endif

COMMON_SRC := $(wildcard common/*.c)
SQL        := $(sort $(wildcard sql/*.sql))
GEN_SRC    := $(BUILD)/gen/migrations.c
COMMON_OBJ := $(COMMON_SRC:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/gen/migrations.o
EXES       := gateway processor router batchrouter ctl
BINS       := $(BUILD)/bin/gateway $(BUILD)/bin/pintlectl
# each executable directory minus main.c becomes build/lib<dir>.a
lib_src     = $(filter-out $(1)/main.c,$(wildcard $(1)/*.c))
lib_obj     = $(patsubst %.c,$(BUILD)/obj/%.o,$(call lib_src,$(1)))

ifneq ($(wildcard processor/main.c),)
BINS += $(BUILD)/bin/processor
endif
ifneq ($(wildcard router/main.c),)
BINS += $(BUILD)/bin/router
endif
ifneq ($(wildcard batchrouter/main.c),)
BINS += $(BUILD)/bin/batchrouter
endif

UNIT_SRC   := $(wildcard tests/unit/*/test_*.c)
UNIT_BINS  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/unit/%)
INTEG_SRC  := $(wildcard tests/integration/test_*.c)
INTEG_BINS := $(INTEG_SRC:tests/integration/%.c=$(BUILD)/tests/integration/%)

.PHONY: all deps run stop test config-check prom-check unit integration transformer-test deploy-test e2e check asan fuzz fuzz-smoke bench images clean format format-check
.SECONDARY:

all: $(BINS)

$(BUILD)/gen/migrations.c: $(SQL) tools/embed_sql.sh
	@mkdir -p $(dir $@)
	$(Q)tools/embed_sql.sh $@ $(SQL)

$(BUILD)/obj/gen/migrations.o: $(BUILD)/gen/migrations.c
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) -Wno-overlength-strings -c $< -o $@

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  CC  $<"
	$(Q)$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libcommon.a: $(COMMON_OBJ)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/lib%.a: $$(call lib_obj,%)
	$(Q)rm -f $@ && ar rcs $@ $^ $(if $^,,/dev/null) 2>/dev/null || ar rcs $@

.SECONDEXPANSION:
$(BUILD)/bin/pintlectl: $(BUILD)/obj/ctl/main.o $(BUILD)/libcommon.a
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  LD  $@"
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bin/%: $(BUILD)/obj/%/main.o $$(call lib_obj,%) $(BUILD)/libcommon.a
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  LD  $@"
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# A unit test links the objects of the directory it tests plus libcommon.
$(BUILD)/tests/unit/%: $(BUILD)/obj/tests/unit/%.o $$(call lib_obj,$$(firstword $$(subst /, ,$$*))) $(BUILD)/libcommon.a
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS) $(filter-out %/common/main.o,$^) $(LDLIBS) -lcmocka -o $@

$(BUILD)/tests/integration/%: $(BUILD)/obj/tests/integration/%.o $(BUILD)/libcommon.a
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -lcmocka -o $@

deps:
	@tools/deps.sh

# make run GATEWAYS=2 PROCESSORS=3 ROUTERS=3 BATCHROUTERS=0: instances of each (default 1)
# make run S3=1: also a local S3 server (radosgw) with a MINIO destination on it
run: deps all
	@deploy/run.sh $(if $(WORKSPACE),--workspace "$(WORKSPACE)") $(if $(GATEWAYS),--gateways "$(GATEWAYS)") \
	    $(if $(PROCESSORS),--processors "$(PROCESSORS)") $(if $(ROUTERS),--routers "$(ROUTERS)") \
	    $(if $(BATCHROUTERS),--batchrouters "$(BATCHROUTERS)") $(if $(S3),--s3)

stop:
	@deploy/run.sh --stop

unit: $(UNIT_BINS)
	@tools/run_unit.sh $(UNIT_BINS)

# Unit tests with database cases (skipped without PINTLE_DB_DSN) also run
# here, against the private Postgres, so those cases never go unrun.
DB_UNIT_BINS := $(BUILD)/tests/unit/router/test_store $(BUILD)/tests/unit/router/test_parts \
                $(BUILD)/tests/unit/batchrouter/test_warehouse
integration: all $(INTEG_BINS) $(DB_UNIT_BINS)
	@tests/integration/run.sh $(INTEG_BINS) $(DB_UNIT_BINS)

e2e: all
	@cd tests/e2e && node --test --test-concurrency=1 --test-timeout=420000 *.test.js

transformer-test:
	@cd transformer && node --test test/

# Offline checks of helm/pintle and the Dockerfiles (tests/helm): helm lint,
# helm template validated against the Kubernetes schemas, --check-config of the
# rendered config by the built binaries.
deploy-test: all
	@cd tests/helm && node --test *.test.js

# config/pintle.conf documents every key at its default: it must match the table.
config-check: all
	@if $(BUILD)/bin/pintlectl config-doc | diff -u config/pintle.conf - ; then \
	  echo "config-doc: 1 passed, 0 failed"; \
	else echo "config/pintle.conf is stale: run build/bin/pintlectl config-doc > config/pintle.conf"; \
	  echo "config-doc: 0 passed, 1 failed"; exit 1; fi

# deploy/prometheus: the scrape config and alert rules parse, and every
# alert's promtool unit test passes (promtool: Debian's prometheus package).
prom-check:
	@promtool check config deploy/prometheus/prometheus.yml >/dev/null && \
	  promtool check rules deploy/prometheus/alerts.yml >/dev/null && \
	  promtool test rules deploy/prometheus/alerts.test.yml && \
	  echo "promtool: 1 passed, 0 failed" || { echo "promtool: 0 passed, 1 failed"; exit 1; }

check: config-check prom-check unit integration transformer-test deploy-test e2e

# make test: what CI runs. Installs what is missing, builds, runs everything.
test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory check
	@$(MAKE) --no-print-directory fuzz-smoke

# Sanitizer build; C unit and integration tests under it, then the end-to-end
# suite against the sanitized services (LeakSanitizer fails a leaking exit).
asan:
	@$(MAKE) --no-print-directory BUILD=build-asan SANITIZE=address,undefined all unit integration
	@cd tests/e2e && PINTLE_BUILD=build-asan node --test --test-concurrency=1 --test-timeout=420000 *.test.js

FUZZ_SECONDS ?= 60
$(BUILD)-fuzz/fuzz_ingest: fuzz/fuzz_ingest.c gateway/ingest.c $(COMMON_SRC) $(GEN_SRC)
	@mkdir -p $(dir $@)
	$(Q)clang -std=gnu11 -g -O1 -I. -I$(BUILD)/gen -fsanitize=fuzzer,address,undefined $(shell pkg-config --cflags $(PKGS)) \
	    fuzz/fuzz_ingest.c gateway/ingest.c common/ids.c common/jobq.c common/jsonu.c common/buf.c common/utf8.c common/xalloc.c \
	    $(LDLIBS) -o $@

fuzz: $(BUILD)-fuzz/fuzz_ingest
	@mkdir -p $(BUILD)-fuzz/corpus
	$(BUILD)-fuzz/fuzz_ingest -max_total_time=$(FUZZ_SECONDS) -max_len=8192 $(BUILD)-fuzz/corpus fuzz/seeds

fuzz-smoke: $(BUILD)-fuzz/fuzz_ingest
	@mkdir -p $(BUILD)-fuzz/corpus
	@$(BUILD)-fuzz/fuzz_ingest -max_total_time=10 -max_len=8192 $(BUILD)-fuzz/corpus fuzz/seeds 2>$(BUILD)-fuzz/last.log \
	  && { tail -n 1 $(BUILD)-fuzz/last.log; echo "fuzz: 1 passed, 0 failed"; } \
	  || { tail -n 40 $(BUILD)-fuzz/last.log; echo "fuzz: 0 passed, 1 failed"; exit 1; }

# The two images (deploy/docker), tagged with the chart's appVersion and named as
# helm/pintle/values.yaml expects; needs docker (not part of make test).
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\(.*\)"/\1/p' helm/pintle/Chart.yaml)
images:
	docker build -f deploy/docker/Dockerfile -t pintle/pintle:$(IMAGE_TAG) .
	docker build -f deploy/docker/transformer.Dockerfile -t pintle/pintle-transformer:$(IMAGE_TAG) .

bench: deps all
	@bench/run.sh $(if $(QUICK),--quick)

format:
	clang-format -i $(shell git ls-files '*.c' '*.h')

format-check:
	clang-format --dry-run --Werror $(shell git ls-files '*.c' '*.h')

clean:
	rm -rf build build-asan build-fuzz

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
