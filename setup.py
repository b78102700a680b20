"""The C block walker as an optional extension; everything else is in pyproject.toml.

``walker.c`` is plain C (no Python.h) that the capture agent loads with ctypes
(netevents/agent/capture/cwalk.py). It is built when the package is installed (a wheel, an
sdist, ``pip install -e .``) on a machine with a C compiler; ``optional=True`` lets an install
without one succeed, and the agent then runs the pure-Python walker and says why in its status.
``walker_id.c`` adds the SHA-256 of walker.c as built, so a checkout whose walker.c changed
after the build is told to rebuild instead of running the old walker.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
CAPTURE = "netevents/agent/capture"
WALKER_SHA256 = hashlib.sha256((HERE / CAPTURE / "walker.c").read_bytes()).hexdigest()

setup(ext_modules=[Extension(
    "netevents.agent.capture._cwalker",
    sources=[f"{CAPTURE}/walker.c", f"{CAPTURE}/walker_id.c"],
    define_macros=[("NW_WALKER_SHA256", f'"{WALKER_SHA256}"')],
    extra_compile_args=["-O2"],
    optional=True,
)])
