"""ipstats: per-peer TCP counter deltas from raw NETLINK_SOCK_DIAG, with a residual.

    sockdiag.py    netlink sock_diag: dump request, destroy multicast, the fast tcp_info parser
    aggregate.py   sans-IO: per-socket baselines by cookie, per-peer sums, levels, cap, residual
    mib.py         /proc/net/snmp + netstat of the namespace (for the residual)
    collector.py   the asyncio shell (IpstatsCollector) and its config (IpstatsConfig)
    sample.toml    an example [ipstats] section
"""

from __future__ import annotations

from typing import Any

from .collector import IpstatsCollector, IpstatsConfig

__all__ = ["IpstatsCollector", "IpstatsConfig", "build"]


def build(section: dict[str, Any], agent_cfg: Any = None) -> IpstatsCollector:
    """The collector for an ``[ipstats]`` config section.

    Raises:
        ConfigError: naming the option that is unknown or invalid.
    """
    return IpstatsCollector(IpstatsConfig.from_section(dict(section or {})))
