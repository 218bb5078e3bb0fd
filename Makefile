# The two commands of the README: `make serve` and `make test`. Everything they need is
# installed here (a venv in .venv, Debian's clickhouse-server for the tests).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PROJECT ?= example
export TINYINGEST_REQUIRE_EXTENSIONS ?= 1

.PHONY: serve test test-soak test-pure compile debug typecheck bench clean system-deps clickhouse

# Python's venv module and headers and a C compiler (Debian splits them out of python3).
system-deps:
	@$(PYTHON) -c 'import ensurepip, sysconfig, os, sys; \
		sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
		2>/dev/null && command -v cc >/dev/null || { \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			python3-venv python3-dev gcc; }

$(VENV)/.installed: pyproject.toml setup.py | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77" "Cython>=3.1,<4" wheel
	$(PY) -m pip install -q --no-build-isolation -e '.[embedded,test]'
	touch $@

# Rebuild the extension in place (setuptools only recompiles what changed).
compile: $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace

debug: $(VENV)/.installed
	TINYINGEST_DEBUG=1 $(PY) setup.py -q build_ext --inplace --force
	$(VENV)/bin/cython -a -I ext ext/_native.pyx -o /tmp/_native_annotated.c

# Debian's ClickHouse server for the tests (the suite starts its own private instance).
clickhouse:
	@command -v clickhouse-server >/dev/null || [ -x /usr/sbin/clickhouse-server ] || { \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			clickhouse-server clickhouse-client; }

test: compile clickhouse
	$(PY) -m pytest -m "not soak"
	$(VENV)/bin/mypy --strict tinyingest

test-soak: compile clickhouse
	$(PY) -m pytest -m soak

test-pure: $(VENV)/.installed clickhouse
	TINYINGEST_REQUIRE_EXTENSIONS=0 TINYINGEST_NO_EXTENSIONS=1 $(PY) -m pytest -m "not soak"

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy --strict tinyingest

bench: compile clickhouse
	$(PY) benchmarks/ingest.py

serve: compile
	@[ -d $(PROJECT) ] || $(VENV)/bin/tinyingest init $(PROJECT)
	@echo
	@echo "Then, in another shell:"
	@echo "  curl -X POST 'http://127.0.0.1:7181/v0/events?name=events&wait=true' \\"
	@echo "    -H \"Authorization: Bearer \$$(cat .tinyingest/admin_token)\" \\"
	@echo "    -d '{\"timestamp\":\"2024-01-01 10:00:00\",\"user_id\":1,\"event\":\"click\",\"value\":1.5}'"
	@echo "  curl -G 'http://127.0.0.1:7181/v0/sql' -H \"Authorization: Bearer \$$(cat .tinyingest/admin_token)\" \\"
	@echo "    --data-urlencode 'q=SELECT * FROM events'"
	@echo
	$(VENV)/bin/tinyingest serve --project $(PROJECT)

clean:
	rm -rf build *.egg-info ext/*.c ext/*.html tinyingest/*.so .mypy_cache .pytest_cache
