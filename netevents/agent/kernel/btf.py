"""The kernel's own type information (BTF, ``/sys/kernel/btf/vmlinux``), read in Python.

Only what the agent needs at run time: the values of one enum (``enum skb_drop_reason``, whose
numbering changes from kernel to kernel, so the names must come from the running kernel, not
from the kernel the eBPF object was built on). No bpftool, no clang.

Format: include/uapi/linux/btf.h. A header (``struct btf_header``), then the type section (a
sequence of ``struct btf_type`` each followed by kind-specific data) and the string section.
"""

from __future__ import annotations

import struct
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

BTF_MAGIC = 0xEB9F
# struct btf_header: magic u16, version u8, flags u8, hdr_len u32, type_off, type_len,
# str_off, str_len (u32 each; offsets from the end of the header)
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")   # struct btf_type: name_off, info, size|type

# Bytes of kind-specific data after a btf_type: (fixed, per vlen member). include/uapi/linux/btf.h
_KIND_EXTRA = {
    1: (4, 0),    # INT: u32 encoding
    2: (0, 0),    # PTR
    3: (12, 0),   # ARRAY: struct btf_array
    4: (0, 12),   # STRUCT: struct btf_member
    5: (0, 12),   # UNION
    6: (0, 8),    # ENUM: struct btf_enum {name_off, s32 val}
    7: (0, 0),    # FWD
    8: (0, 0),    # TYPEDEF
    9: (0, 0),    # VOLATILE
    10: (0, 0),   # CONST
    11: (0, 0),   # RESTRICT
    12: (0, 0),   # FUNC
    13: (0, 8),   # FUNC_PROTO: struct btf_param
    14: (4, 0),   # VAR: struct btf_var
    15: (0, 12),  # DATASEC: struct btf_var_secinfo
    16: (0, 0),   # FLOAT
    17: (4, 0),   # DECL_TAG: struct btf_decl_tag
    18: (0, 0),   # TYPE_TAG
    19: (0, 12),  # ENUM64: struct btf_enum64 {name_off, val_lo32, val_hi32}
}
_ENUM, _ENUM64 = 6, 19


class BtfError(ValueError):
    """The data is not BTF this reader understands; the message says where it stopped."""


def enum_values(name: str, data: bytes) -> dict[str, int] | None:
    """The members of ``enum <name>`` in BTF ``data`` as {member: value}, or None when the
    enum is not there.

    Raises:
        BtfError: not BTF (bad magic), or a type of a kind this reader does not know.
    """
    if len(data) < _HEADER.size:
        raise BtfError("BTF shorter than its header")
    magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
        _HEADER.unpack_from(data)
    if magic != BTF_MAGIC:
        raise BtfError(f"not BTF (magic 0x{magic:x}, little-endian 0x{BTF_MAGIC:x} expected)")
    strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
    # The name's offset in the string section: one integer compare per type instead of a
    # string per type (vmlinux has ~150k types).
    at = strings.find(b"\0" + name.encode() + b"\0")
    if at < 0:
        return None
    wanted = at + 1
    pos, end = hdr_len + type_off, hdr_len + type_off + type_len
    unpack = _TYPE.unpack_from
    while pos < end:
        name_off, info, _size = unpack(data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        pos += 12
        extra = _KIND_EXTRA.get(kind)
        if extra is None:
            raise BtfError(f"BTF type of unknown kind {kind} at offset {pos - 12}")
        if name_off == wanted and kind in (_ENUM, _ENUM64):
            return _members(data, pos, kind, vlen, bool(info >> 31), strings)
        pos += extra[0] + extra[1] * vlen
    return None


def _members(data: bytes, pos: int, kind: int, vlen: int, signed: bool,
             strings: bytes) -> dict[str, int]:
    # kind_flag (bit 31 of info) says the enum is signed; else its values are unsigned.
    out: dict[str, int] = {}
    for i in range(vlen):
        if kind == _ENUM:
            off, value = struct.unpack_from("<Ii" if signed else "<II", data, pos + 8 * i)
        else:
            off, lo, hi = struct.unpack_from("<III", data, pos + 12 * i)
            value = hi << 32 | lo
            if signed and value >= 1 << 63:
                value -= 1 << 64
        out[strings[off:strings.index(b"\0", off)].decode()] = value
    return out


def skb_drop_reasons(path: Path = VMLINUX) -> dict[int, str]:
    """The running kernel's ``enum skb_drop_reason`` as {number: name without
    ``SKB_DROP_REASON_``}; empty on a kernel without drop reasons (before 5.17).

    Raises:
        OSError: ``path`` cannot be read.
        BtfError: it is not BTF this reader understands.
    """
    members = enum_values("skb_drop_reason", path.read_bytes()) or {}
    return {v: k.removeprefix("SKB_DROP_REASON_") for k, v in members.items()
            if k.startswith("SKB_DROP_REASON_")}
