"""Every error netevents raises on purpose, in one tree.

    NeteventsError
    ├── ConfigError          a wrong option, config file or argument; the CLI exits 2
    │   └── SubjectError     a site/host/kind token that would break a NATS subject
    ├── CodecError           a message on the bus that is not a valid v1 batch
    │   ├── MalformedError   not msgpack, truncated, or not a map
    │   ├── VersionError     a wire version this reader does not speak
    │   ├── OversizeError    larger than the batch size limit
    │   └── SchemaError      a field missing or of the wrong type
    ├── BusError             the NATS side: cannot connect, cannot start the embedded server
    ├── NetlinkError         a netlink message from the kernel that is truncated or malformed,
    │                        or an NLMSG_ERROR answer (``errno`` set)
    └── CapabilityError      a missing privilege or kernel feature; names what is missing

Lower-layer exceptions (nats-py, msgpack, OSError from the kernel) are translated into these at
the module that talks to that layer, so callers catch one family.
"""

from __future__ import annotations

import errno as _errno
import os


class NeteventsError(Exception):
    """Base of every error netevents raises on purpose."""


class ConfigError(NeteventsError):
    """A configuration value, option or argument is wrong. The message names the option."""


class SubjectError(ConfigError):
    """A token (kind, site or host) is not ``[A-Za-z0-9_-]+`` and would break a subject."""


class CodecError(NeteventsError):
    """A message is not a valid batch. ``reason`` is a short stable name used for counting."""

    reason = "invalid"


class MalformedError(CodecError):
    reason = "malformed"


class VersionError(CodecError):
    reason = "version"


class OversizeError(CodecError):
    reason = "oversize"


class SchemaError(CodecError):
    reason = "schema"


class BusError(NeteventsError):
    """The bus could not be reached, or the embedded server could not be started."""


class NetlinkError(NeteventsError):
    """A netlink message that cannot be decoded, or the kernel's NLMSG_ERROR answer.

    ``errno`` is the positive error number of an NLMSG_ERROR (named in the message), None for a
    truncated or malformed message (the message names the offset).
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    @classmethod
    def from_errno(cls, err: int, what: str = "netlink") -> NetlinkError:
        """The error for an NLMSG_ERROR carrying ``err`` (positive), e.g. ``EBUSY``."""
        name = _errno.errorcode.get(err, f"errno {err}")
        return cls(f"{what}: the kernel answered {name} ({os.strerror(err)})", err)


class CapabilityError(NeteventsError):
    """A privilege or kernel feature a source needs is missing.

    ``capability`` names it the way an operator would look it up (``CAP_NET_ADMIN``,
    ``tracefs``, ``CONFIG_NET_DROP_MONITOR``).
    """

    def __init__(self, capability: str, message: str) -> None:
        super().__init__(message)
        self.capability = capability
