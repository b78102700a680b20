"""The C block walker: built when the package is installed, loaded with ctypes.

Why: walking a block in Python, building a tuple per frame, transposing to columns and packing
them with msgpack costs ~3 µs of CPU per frame, most of the capture agent's CPU. ``walker.c``
does the same walk and writes each column's msgpack encoding directly (no Python object per
frame); :class:`~netevents.codec.PackedColumns` carries those bytes into the batch unchanged.
The wire output is byte for byte what the Python walker gives (tests/agent/capture/test_capture_cwalk.py).

Choosing (``[capture] walker``, or ``$NETEVENTS_CAPTURE_WALKER`` when the option is ``auto``):
``auto`` uses C when it is installed and falls back to the pure-Python walker with one log line
(and ``sources["capture.c_walker"]`` unavailable with the reason in status); ``c`` insists (a
CapabilityError if it is not there); ``python`` never tries.

Building: ``walker.c`` is plain C (no Python headers), compiled by setuptools as the optional
extension ``netevents.agent.capture._cwalker`` (setup.py) when the package is installed, a
wheel is built or ``pip install -e .`` runs, on a machine with a C compiler (Debian ``gcc``).
Nothing is compiled or cached at run time. The library carries the SHA-256 of the walker.c it
was built from (walker_id.c); where walker.c sits beside it and differs (an edited checkout)
the library is not loaded and the reason says how to rebuild.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.machinery
import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import msgpack

from netevents.codec import PackedColumns
from netevents.errors import CapabilityError

from .ring import BlockInfo, PythonWalker
from .summary import COLUMNS

log = logging.getLogger("netevents.agent.capture")

SOURCE = Path(__file__).with_name("walker.c")
WALKER_ENV = "NETEVENTS_CAPTURE_WALKER"
WALKERS = ("auto", "c", "python")
SOURCE_NAME = "capture.c_walker"
"""The status ``sources`` entry that says which walker runs (and why not C)."""

# walker.c's column order: summary.COLUMNS without "queue" (constant per batch, added here).
_C_COLUMNS = tuple(c for c in COLUMNS if c != "queue")


class BuildError(RuntimeError):
    """The walker is not installed or does not load here; the message is one line saying why."""


class FrameWalker(Protocol):
    """What the collector needs from a walker: walk blocks into a batch, take the batch."""

    name: str

    def __len__(self) -> int:
        """Frames in the batch being built."""

    def walk(self, buf: Any, off: int) -> BlockInfo:
        """Append the frames of the block at ``off`` of ``buf`` (ring memory) to the batch."""

    def take(self, queue: int | None) -> tuple[Any, int, int]:
        """The batch's columns (a mapping in summary.COLUMNS order), its first and last
        timestamps; the walker starts a new batch. Only called with at least one frame."""


EXTENSION = "_cwalker"
REBUILD = "pip install -e . (or python setup.py build_ext --inplace)"


def library_path() -> Path:
    """The walker library installed beside this module.

    Raises:
        BuildError: it was not built when the package was installed.
    """
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = SOURCE.with_name(EXTENSION + suffix)
        if path.exists():
            return path
    raise BuildError("not built when netevents was installed (no C compiler then: Debian package "
                     "gcc; reinstall netevents to build it)")


class _Block(ctypes.Structure):
    _fields_ = [("seq", ctypes.c_uint64), ("first_ts", ctypes.c_uint64),
                ("last_ts", ctypes.c_uint64), ("num_pkts", ctypes.c_uint32),
                ("status", ctypes.c_uint32), ("walked", ctypes.c_uint32)]


_lib: ctypes.CDLL | None = None
_load_lock = threading.Lock()  # collectors in one process open their walkers in threads


def load() -> ctypes.CDLL:
    """The installed walker library, loaded once per process.

    Raises:
        BuildError: it is not installed (see :func:`library_path`), does not load, or was
            built from another walker.c than the one beside it.
    """
    with _load_lock:
        return _load()


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    path = library_path()
    try:
        lib = ctypes.CDLL(str(path))
        built_from = (ctypes.c_char * 65).in_dll(lib, "nw_walker_sha256").value  # walker_id.c
    except (OSError, ValueError) as exc:
        raise BuildError(f"loading {path.name}: {exc}") from None
    if SOURCE.exists() and built_from.decode() != hashlib.sha256(SOURCE.read_bytes()).hexdigest():
        raise BuildError(f"{path.name} was built from another {SOURCE.name} than the one "
                         f"beside it; rebuild: {REBUILD}")
    p, u64, sz = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t
    lib.nw_batch_new.restype = p
    lib.nw_batch_new.argtypes = []
    lib.nw_batch_free.argtypes = [p]
    lib.nw_batch_reset.argtypes = [p]
    lib.nw_batch_rows.restype = u64
    lib.nw_batch_rows.argtypes = [p]
    lib.nw_batch_col.restype = p
    lib.nw_batch_col.argtypes = [p, ctypes.c_int, ctypes.POINTER(sz)]
    lib.nw_walk_block.restype = ctypes.c_int
    lib.nw_walk_block.argtypes = [p, p, sz, sz, ctypes.POINTER(_Block)]
    _lib = lib
    return lib


# A read-only memoryview of C memory, no copy (a ctypes array type per size would be a new,
# cached-forever type per batch).
_view = ctypes.pythonapi.PyMemoryView_FromMemory
_view.restype = ctypes.py_object
_view.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]
_PyBUF_READ = 0x100

_PACK = msgpack.Packer(use_bin_type=True)
_MAP_HEADER = _PACK.pack_map_header(len(COLUMNS))
_KEYS = {name: _PACK.pack(name) for name in COLUMNS}


class _CBatch:
    """One batch of walker.c (``nw_batch``: the growing column buffers), freed with this object."""

    __slots__ = ("lib", "ptr")

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.ptr = lib.nw_batch_new()
        if not self.ptr:
            raise MemoryError("C walker batch")

    def __del__(self) -> None:
        ptr, self.ptr = getattr(self, "ptr", None), None
        if ptr:
            self.lib.nw_batch_free(ptr)


SPARE_BATCHES = 4
"""C batches a walker keeps for reuse once their frames are published (their buffers have
grown to a batch's size: reusing them spares the regrowth)."""


class CWalker:
    """Frames of whole blocks -> msgpack column bodies, in C (see walker.c).

    :meth:`take` lends the batch's C buffers to the :class:`PackedColumns` it returns (no copy
    there: :func:`~netevents.codec.encode_batch` copies them once, into the encoded batch) and
    walks on into another C batch; the lent one comes back for reuse when that object goes.

    Raises (from the constructor): BuildError, like :func:`load`.
    """

    name = "c"

    def __init__(self) -> None:
        self._lib = load()
        self._cur = _CBatch(self._lib)
        self._batch = self._cur.ptr
        self._spare: list[_CBatch] = []
        self._info = _Block()
        self._info_ref = ctypes.byref(self._info)
        self._rows = 0
        self._first_ts = 0
        self._last_ts = 0

    def __len__(self) -> int:
        return self._rows

    def walk(self, buf: Any, off: int) -> BlockInfo:
        if isinstance(buf, bytes):
            rc = self._lib.nw_walk_block(self._batch, buf, len(buf), off, self._info_ref)
        else:
            # Ring memory (an mmap): its address for this one call; the export is released at
            # once so the ring can still be closed.
            view = (ctypes.c_char * len(buf)).from_buffer(buf)
            try:
                rc = self._lib.nw_walk_block(self._batch, ctypes.addressof(view), len(buf), off,
                                             self._info_ref)
            finally:
                del view
        if rc == -1:
            # The block descriptor is outside the buffer: whatever the Python walker raises.
            return PythonWalker().walk(buf, off)
        if rc == -2:
            raise MemoryError("C walker: out of memory growing the batch")
        i = self._info
        if i.walked:
            if not self._rows:
                self._first_ts = i.first_ts
            self._last_ts = i.last_ts
            self._rows += i.walked
        return BlockInfo(i.seq, i.num_pkts, i.status, i.first_ts if i.walked else None,
                         i.last_ts if i.walked else None, i.walked)

    def take(self, queue: int | None) -> tuple[PackedColumns, int, int]:
        # Written for speed (a batch is a few MB: every copy shows): the column bodies are
        # read-only views of the C buffers (no copy here), which the PackedColumns holds with
        # the C batch until it is encoded (one copy, in encode_batch) or joined.
        lib, cur, n = self._lib, self._cur, self._rows
        size = ctypes.c_size_t()
        size_ref = ctypes.byref(size)
        array = _PACK.pack_array_header(n)
        parts: list = [_MAP_HEADER]
        i = 0
        for name in COLUMNS:
            parts += (_KEYS[name], array)
            if name == "queue":
                parts.append(_PACK.pack(queue) * n)
                continue
            ptr = lib.nw_batch_col(cur.ptr, i, size_ref)
            if size.value:
                parts.append(_view(ptr, size.value, _PyBUF_READ))
            i += 1
        self._cur = self._spare.pop() if self._spare else _CBatch(lib)
        self._batch = self._cur.ptr
        self._rows = 0
        return (PackedColumns(None, n, parts, functools.partial(self._give_back, cur)),
                self._first_ts, self._last_ts)

    def _give_back(self, cbatch: _CBatch) -> None:
        """A lent C batch is no longer read (its views are gone): keep it for reuse, or free it."""
        if len(self._spare) < SPARE_BATCHES:
            self._lib.nw_batch_reset(cbatch.ptr)
            self._spare.append(cbatch)


def open_walker(choice: str = "auto") -> tuple[FrameWalker, str, bool]:
    """The walker to use; when it is not the C one, the one line that says why; and whether
    that is a fallback (C was wanted and is not installed) rather than asked for.

    ``choice`` ``auto`` is overridden by ``$NETEVENTS_CAPTURE_WALKER`` when that is set.

    Raises:
        CapabilityError: ``c`` was asked for and is not installed or does not load here.
        ValueError: an unknown choice.
    """
    if choice == "auto":
        choice = os.environ.get(WALKER_ENV) or "auto"
    if choice not in WALKERS:
        raise ValueError(f"capture walker {choice!r} is not one of {', '.join(WALKERS)}")
    if choice == "python":
        return PythonWalker(), "pure-Python block walker (asked for)", False
    try:
        return CWalker(), "", False
    except BuildError as exc:
        if choice == "c":
            raise CapabilityError("capture", f"C block walker: {exc}") from None
        return (PythonWalker(),
                f"C block walker unavailable ({exc}); using the pure-Python walker", True)
