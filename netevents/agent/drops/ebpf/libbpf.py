"""A thin ctypes binding to libbpf.so.1 (Debian's libbpf1): only the calls the loader needs.

libbpf >= 1.0 semantics: functions returning pointers give NULL and set errno on failure;
functions returning int give a negative errno. Each wrapper raises :class:`BpfError` (an
OSError with the errno and the call's name) so callers translate one exception type.
Prototypes come from /usr/include/bpf/libbpf.h and bpf.h.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import os
from collections.abc import Callable

c_void_p, c_int, c_char_p, c_uint, c_uint32, c_size_t = (
    ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint32, ctypes.c_size_t)

# ring_buffer_sample_fn: int (*)(void *ctx, void *data, size_t size)   (libbpf.h)
SAMPLE_FN = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)

BPF_ANY, BPF_NOEXIST = 0, 1   # include/uapi/linux/bpf.h


class BpfError(OSError):
    """A libbpf call failed; ``errno`` and the call name are set."""


class BpfBatchOpts(ctypes.Structure):
    # struct bpf_map_batch_opts (bpf.h): sz, elem_flags, flags
    _fields_ = [("sz", c_size_t), ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


_lib: ctypes.CDLL | None = None


def load_library() -> ctypes.CDLL:
    """libbpf.so.1 with prototypes set; raises BpfError(ENOENT) when it is not installed."""
    global _lib
    if _lib is not None:
        return _lib
    name = "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        found = ctypes.util.find_library("bpf")
        if not found:
            raise BpfError(errno_mod.ENOENT, "libbpf.so.1 not found (Debian package libbpf1)") from None
        lib = ctypes.CDLL(found, use_errno=True)
    protos: dict[str, tuple] = {
        "libbpf_set_print": (c_void_p, [c_void_p]),
        "libbpf_num_possible_cpus": (c_int, []),
        "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
        "bpf_object__load": (c_int, [c_void_p]),
        "bpf_object__close": (None, [c_void_p]),
        "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
        "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
        "bpf_program__set_autoload": (c_int, [c_void_p, ctypes.c_bool]),
        "bpf_program__attach": (c_void_p, [c_void_p]),
        "bpf_link__destroy": (c_int, [c_void_p]),
        "bpf_map__fd": (c_int, [c_void_p]),
        "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
        "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
        "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
        "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
        "bpf_map_lookup_and_delete_batch": (
            c_int, [c_int, c_void_p, c_void_p, c_void_p, c_void_p, ctypes.POINTER(c_uint32),
                    ctypes.POINTER(BpfBatchOpts)]),
        "ring_buffer__new": (c_void_p, [c_int, SAMPLE_FN, c_void_p, c_void_p]),
        "ring_buffer__free": (None, [c_void_p]),
        "ring_buffer__consume": (c_int, [c_void_p]),
        "ring_buffer__epoll_fd": (c_int, [c_void_p]),
    }
    for fname, (restype, argtypes) in protos.items():
        fn = getattr(lib, fname)
        fn.restype = restype
        fn.argtypes = argtypes
    lib.libbpf_set_print(None)  # libbpf's own warnings would go to stderr; errors come back here
    _lib = lib
    return lib


def _ptr(call: str, value: int | None) -> int:
    if not value:
        err = ctypes.get_errno() or errno_mod.EINVAL
        raise BpfError(err, f"{call}: {os.strerror(err)}")
    return value


def _int(call: str, rc: int) -> int:
    if rc < 0:
        raise BpfError(-rc, f"{call}: {os.strerror(-rc)}")
    return rc


class BpfObject:
    """One opened (then loaded) BPF object file; close() frees everything (links too)."""

    def __init__(self, path: str) -> None:
        self.lib = load_library()
        self.ptr = _ptr("bpf_object__open_file",
                        self.lib.bpf_object__open_file(os.fsencode(path), None))
        self.links: list[int] = []

    def map(self, name: str) -> int:
        return _ptr(f"map {name}", self.lib.bpf_object__find_map_by_name(self.ptr, name.encode()))

    def map_fd(self, name: str) -> int:
        return _int(f"bpf_map__fd({name})", self.lib.bpf_map__fd(self.map(name)))

    def program(self, name: str) -> int:
        return _ptr(f"program {name}",
                    self.lib.bpf_object__find_program_by_name(self.ptr, name.encode()))

    def set_autoload(self, prog: str, on: bool) -> None:
        _int("bpf_program__set_autoload", self.lib.bpf_program__set_autoload(self.program(prog), on))

    def set_max_entries(self, name: str, n: int) -> None:
        _int("bpf_map__set_max_entries", self.lib.bpf_map__set_max_entries(self.map(name), n))

    def load(self) -> None:
        _int("bpf_object__load", self.lib.bpf_object__load(self.ptr))

    def attach(self, prog: str) -> None:
        self.links.append(_ptr(f"bpf_program__attach({prog})",
                               self.lib.bpf_program__attach(self.program(prog))))

    def close(self) -> None:
        for link in self.links:
            self.lib.bpf_link__destroy(link)
        self.links = []
        if self.ptr:
            self.lib.bpf_object__close(self.ptr)
            self.ptr = 0


class RingBuffer:
    """libbpf's ring_buffer over one BPF_MAP_TYPE_RINGBUF map; ``callback(bytes)`` per record.

    ``fd`` is an epoll fd that becomes readable when records are waiting (for add_reader).
    """

    def __init__(self, map_fd: int, callback: Callable[[bytes], None]) -> None:
        self.lib = load_library()

        def sample(_ctx: int, data: int, size: int) -> int:
            callback(ctypes.string_at(data, size))
            return 0

        self._cb = SAMPLE_FN(sample)  # kept referenced: libbpf holds the pointer
        self.ptr = _ptr("ring_buffer__new", self.lib.ring_buffer__new(map_fd, self._cb, None, None))
        self.fd = _int("ring_buffer__epoll_fd", self.lib.ring_buffer__epoll_fd(self.ptr))

    def consume(self) -> int:
        """Run the callback for every waiting record; returns how many."""
        return _int("ring_buffer__consume", self.lib.ring_buffer__consume(self.ptr))

    def close(self) -> None:
        if self.ptr:
            self.lib.ring_buffer__free(self.ptr)
            self.ptr = 0


def possible_cpus() -> int:
    return _int("libbpf_num_possible_cpus", load_library().libbpf_num_possible_cpus())


def update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    lib = load_library()
    _int("bpf_map_update_elem", lib.bpf_map_update_elem(fd, key, value, flags))


def lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    lib = load_library()
    buf = ctypes.create_string_buffer(value_size)
    rc = lib.bpf_map_lookup_elem(fd, key, buf)
    if rc == -errno_mod.ENOENT:
        return None
    _int("bpf_map_lookup_elem", rc)
    return buf.raw


def drain(fd: int, key_size: int, value_size: int, chunk: int = 1024) -> list[tuple[bytes, bytes]]:
    """Read and delete every entry of a hash map nobody writes to any more.

    BPF_MAP_LOOKUP_AND_DELETE_BATCH in chunks; kernels without it (EINVAL/ENOTSUPP) fall back
    to get_next_key + lookup + delete. ``value_size`` is the whole (all-CPU) value.
    """
    lib = load_library()
    out: list[tuple[bytes, bytes]] = []
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    token_in = ctypes.create_string_buffer(8)
    token_out = ctypes.create_string_buffer(8)
    opts = BpfBatchOpts(ctypes.sizeof(BpfBatchOpts), 0, 0)
    first = True
    while True:
        count = c_uint32(chunk)
        rc = lib.bpf_map_lookup_and_delete_batch(
            fd, None if first else token_in, token_out, keys, values, ctypes.byref(count),
            ctypes.byref(opts))
        n = count.value
        kr, vr = keys.raw, values.raw
        out.extend((kr[i * key_size:(i + 1) * key_size], vr[i * value_size:(i + 1) * value_size])
                   for i in range(n))
        if rc == -errno_mod.ENOENT:
            return out
        if rc in (-errno_mod.EINVAL, -524, -errno_mod.ENOSPC) and first and n == 0:
            break  # 524 = ENOTSUPP (kernel-internal); ENOSPC: a bucket larger than the chunk
        _int("bpf_map_lookup_and_delete_batch", rc)
        first = False
        ctypes.memmove(token_in, token_out, 8)
    key = ctypes.create_string_buffer(key_size)
    value = ctypes.create_string_buffer(value_size)
    while lib.bpf_map_get_next_key(fd, None, key) == 0:
        if lib.bpf_map_lookup_elem(fd, key, value) == 0:
            out.append((key.raw, value.raw))
        lib.bpf_map_delete_elem(fd, key)
    return out
