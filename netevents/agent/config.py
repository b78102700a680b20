"""Typed agent configuration, validated once at start with errors that name the option.

A config file is TOML:

    [agent]
    bus = "nats://127.0.0.1:4222"
    host = "web-1"          # default: $NETEVENTS_HOST, else the short hostname
    site = "dc1"            # default: $NETEVENTS_SITE, else local
    status_interval = 5.0
    # addresses = true      # own addresses per namespace in status (rtnetlink)
    # creds / nkey_seed / tls_ca / tls_cert / tls_key = "FILE"   (bus credentials)
    # operator_keys = "/etc/netevents/operators.pub"              (who may send control requests)

    [netstat]               # a section per source; its presence enables the source
    interval = 1.0

Command-line options override the file. Each source validates its own section with
:func:`section_to` against its config dataclass (unknown keys are errors, as are wrong types).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netevents.errors import ConfigError
from netevents.subjects import check_token, default_host


@dataclass(slots=True)
class AgentConfig:
    bus: str | None = None
    host: str = field(default_factory=default_host)
    site: str = "local"
    status_interval: float = 5.0
    queue_size: int = 10_000
    batch_max_events: int = 1000
    batch_max_wait: float = 0.25
    spool_dir: str | None = None
    """Where batches wait while the bus is away (default /var/lib/netevents/spool/<site>-<host>
    as root, else ~/.local/state/netevents/spool/<site>-<host>; $NETEVENTS_SPOOL/<site>-<host>
    when that is set)."""
    spool_max_mb: float = 256.0
    spool_policy: str = "drop_oldest"
    max_inflight: int = 64
    """Batches held in memory on their way to the bus (what a SIGKILL can cost)."""
    creds: str | None = None
    """Bus credentials (files), as the command's --creds, --nkey-seed, --tls-* options."""
    nkey_seed: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    addresses: bool = True
    """Publish the host's own addresses (per namespace its sources read) in its status, so
    correlators know which host an address is (netevents.agent.addresses)."""
    operator_keys: str | None = None
    """Operator public keys the control server trusts: ``ed25519:...`` (comma separated) or a
    file of them (the fleet's ``operators.pub``); default ``$NETEVENTS_OPERATOR_KEYS``. On an
    authenticated bus an agent with none refuses every control request."""
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Enabled sources: name -> its (unvalidated) section; validated by the source's build()."""

    def validate(self) -> AgentConfig:
        check_token(self.host, "host")
        check_token(self.site, "site")
        if self.status_interval <= 0:
            raise ConfigError(f"[agent] status_interval must be > 0, got {self.status_interval}")
        if not 0 < self.batch_max_wait <= 0.25:
            raise ConfigError(f"[agent] batch_max_wait must be in (0, 0.25] seconds, got {self.batch_max_wait}")
        if self.queue_size < 1 or self.batch_max_events < 1:
            raise ConfigError("[agent] queue_size and batch_max_events must be >= 1")
        if self.spool_policy not in ("drop_oldest", "drop_newest"):
            raise ConfigError(f"[agent] spool_policy must be drop_oldest or drop_newest, got {self.spool_policy!r}")
        if self.spool_max_mb <= 0 or self.max_inflight < 1:
            raise ConfigError("[agent] spool_max_mb must be > 0 and max_inflight >= 1")
        return self

    def spool_path(self) -> Path:
        if self.spool_dir:
            return Path(self.spool_dir)
        if os.environ.get("NETEVENTS_SPOOL"):
            return Path(os.environ["NETEVENTS_SPOOL"]) / f"{self.site}-{self.host}"
        base = Path("/var/lib/netevents") if os.geteuid() == 0 else Path(
            os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "netevents"
        return base / "spool" / f"{self.site}-{self.host}"


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def section_to(cls: type, section: dict[str, Any], name: str) -> Any:
    """Build the dataclass ``cls`` from a config section.

    Raises:
        ConfigError: naming ``[name] key`` for an unknown key or a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key, value in section.items():
        if key not in known:
            raise ConfigError(f"[{name}] {key}: unknown option (known: {', '.join(sorted(known))})")
        if not _type_ok(value, hints[key]):
            raise ConfigError(f"[{name}] {key}: expected {hints[key]}, got {value!r}")
    return cls(**section)


def load_file(path: str | Path) -> AgentConfig:
    """Read a TOML config file.

    Raises:
        ConfigError: if the file is missing, not TOML, or has unknown sections/options.
    """
    from . import SOURCES

    try:
        doc = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    agent = doc.pop("agent", {})
    if not isinstance(agent, dict):
        raise ConfigError(f"{path}: [agent] must be a table")
    agent = {k: v for k, v in agent.items()}
    cfg = section_to(AgentConfig, {k: v for k, v in agent.items() if k != "sources"}, "agent")
    for name, section in doc.items():
        if name not in SOURCES:
            raise ConfigError(f"{path}: unknown section [{name}] (sources: {', '.join(SOURCES)})")
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
        if section.get("enabled", True):
            cfg.sources[name] = {k: v for k, v in section.items() if k != "enabled"}
    return cfg
