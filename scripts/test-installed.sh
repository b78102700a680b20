#!/usr/bin/env bash
# Test what users install: build the sdist, build the wheel from that sdist, install the wheel
# (not editable) into a fresh virtual environment with the test extras, and run the test suite
# against the installed package. Arguments go to pytest (e.g. tests/agent -x).
#
#   .venv-build/      build front end only (python -m build)
#   dist/             netevents-<v>.tar.gz and netevents-<v>-<tag>.whl (replaced on every run)
#   .venv-installed/  the fresh environment the tests run in (recreated on every run)
#
# NETEVENTS_TESTS=installed makes tests/conftest.py refuse a netevents imported from the
# checkout; PYTHONSAFEPATH=1 (python -P) keeps the working directory off sys.path in pytest and
# in every subprocess the tests start, so only the installed package can be imported.
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
export NETEVENTS_TESTS=installed NETEVENTS_WHEEL="$PWD/$wheel" NETEVENTS_SDIST="$(ls "$PWD"/dist/netevents-*.tar.gz)"
export PYTHONSAFEPATH=1
exec .venv-installed/bin/python -m pytest "$@"
