# ClearCut toolchain. `make export` and `make test` work from a clean clone: `setup` installs everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL ?= isnet-imgly
VARIANTS ?=
WEIGHTS ?=
SIZE ?=
DATA ?=
STRICT ?=
EXPORT_ARGS := --model $(MODEL) $(if $(VARIANTS),--variants $(VARIANTS)) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(SIZE),--size $(SIZE)) $(if $(STRICT),--strict)

DIST ?= dist
PORT ?= 8080

.PHONY: setup setup-python setup-system setup-web export bundle serve publish bench-web bench-ccw eval test clean list

setup: setup-python setup-system setup-web

# Python: torch pinned to the local CPU wheel (any other spec pulls GBs of CUDA), the rest from PyPI.
setup-python: $(VENV)/.setup-stamp
$(VENV)/.setup-stamp: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

# Debian packages for the browser tests: Chromium (never `playwright install`) and nginx as the CDN stand-in.
# Browsers of the test matrix: Chromium, Firefox ESR (driven over WebDriver BiDi) and WebKitGTK (its WebDriver under xvfb).
setup-system:
	@if ! command -v chromium >/dev/null || ! { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null \
	    || ! command -v firefox-esr >/dev/null || ! command -v WebKitWebDriver >/dev/null || ! command -v xvfb-run >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium nginx-light \
	    firefox-esr webkit2gtk-driver xvfb; \
	fi

# npm packages of the browser runtime (lockfile committed): onnxruntime-web and fflate (the demo's zip writer),
# which `make bundle` copies into dist/, and esbuild (tests). All are devDependencies: the runtime has none.
setup-web:
	@if [ -f web_runtime/package-lock.json ]; then \
	  if [ ! -d web_runtime/node_modules/fflate ] || [ web_runtime/package-lock.json -nt web_runtime/node_modules/.package-lock.json ]; then \
	    npm ci --prefix web_runtime --include=dev --no-audit --no-fund; \
	  fi; \
	fi

list: setup-python
	$(PY) -m export.cli list

## export: pull real weights, export, quantize, prove parity → build/$(MODEL)/, then the browser bundle → dist/
export: setup-python setup-web
	$(PY) -m export.cli export $(EXPORT_ARGS)
	$(MAKE) --no-print-directory bundle

## bundle: build/$(MODEL)/ → dist/ (runtime, onnxruntime-web files, verified chunks, manifest, demo, CDN headers)
bundle: setup-python setup-web
	$(PY) -m web_runtime.build_bundle --build build/$(MODEL) --out $(DIST) $(if $(VARIANTS),--variants $(VARIANTS))

## serve: dist/ on http://127.0.0.1:$(PORT)/ through nginx with the CDN headers
serve: setup-python setup-system
	$(PY) -m web_runtime.serve --dist $(DIST) --port $(PORT)

## publish: dist/ → DEST=s3://bucket/prefix or DEST=folder as <version>/ + latest.json, then verified over HTTP(S)
## (PUBLISH_ARGS: --dry-run, --prune, --public-url URL, --set-cors, --endpoint-url URL, ...; README "Publishing")
publish: setup-python
	@test -n "$(DEST)" || { echo 'usage: make publish DEST=s3://bucket/prefix|folder [PUBLISH_ARGS=...]' >&2; exit 2; }
	$(PY) -m web_runtime.publish --dist $(DIST) $(DEST) $(PUBLISH_ARGS)

## bench-web: cold/warm cut per variant in headless Chromium vs native onnxruntime, WASM under Node and imgly
bench-web: setup
	$(PY) -m bench.web --dist $(DIST) --build build/$(MODEL) $(BENCH_ARGS)

## bench-ccw: decode time of a .ccw weight container with IS-Net's ~44M conv weights in headless Chromium
bench-ccw: setup-python setup-system
	$(PY) -m bench.ccw_decode $(BENCH_ARGS)

## eval: compare built variants on size, parity, quality (DATA=folder with images/ + masks/) and speed
eval: setup-python
	$(PY) -m eval.run --model $(MODEL) $(if $(VARIANTS),--variants $(VARIANTS)) $(if $(DATA),--data $(DATA)) $(EVAL_ARGS)
	$(PY) -m web_runtime.first_visit --dist $(DIST)

## test: the whole suite (unit, pipeline on a small model, real weights once, browser)
test: setup
	$(PY) -m pytest -q

clean:
	rm -rf build dist
