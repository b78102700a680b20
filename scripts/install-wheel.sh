#!/usr/bin/env bash
# Install what users install, for the tests: build the sdist, build the wheel from that sdist,
# install the wheel (not editable) with the test extras into a fresh virtual environment. The
# README's test command then runs pytest with that environment's python:
#
#   scripts/setup-host.sh && scripts/install-wheel.sh && .venv-installed/bin/python -P -m pytest
#
#   .venv-build/      build front end only (python -m build)
#   dist/             netevents-<v>.tar.gz and netevents-<v>-<tag>.whl (replaced on every run;
#                     tests/test_package.py checks their contents)
#   .venv-installed/  the fresh environment the tests run in (recreated on every run)
#
# Run from .venv-installed, tests/conftest.py is in installed mode: it refuses a netevents
# imported from the checkout and sets PYTHONSAFEPATH for every subprocess the tests start
# (python -P keeps the working directory off sys.path in pytest itself).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-build
.venv-build/bin/pip install -q build
rm -rf dist
.venv-build/bin/python -m build --outdir dist . >dist.log 2>&1 || { tail -40 dist.log >&2; exit 1; }
rm -f dist.log
wheel=$(ls dist/netevents-*.whl)
python3 -m venv --clear .venv-installed
.venv-installed/bin/pip install -q "${wheel}[test,trio]"
echo "installed ${wheel} into .venv-installed"
