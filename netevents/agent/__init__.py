"""Host side of netevents: one module (or folder) per kernel source, plus the runner.

    base.py        the collector interface (Collector, Sink)
    runner.py      AgentRunner: collectors in a TaskGroup, batching, bounded queues, status
    config.py      typed agent configuration (TOML file + command line), validated once
    compose.py     the composition root: an AgentConfig -> collectors, publisher, runner and
                   control server; used by the command line and by every capture worker
    spool.py       the bounded on-disk spool and the publisher that replays it
    drops/         drop events: NET_DM, kfree_skb tracepoint, eBPF (flow + netns), dwdump
                   captures, counters
    capture/       AF_PACKET TPACKET_V3 rings: frame summaries and gap records (fanout workers)
    netstat/       host-wide counters with nstat semantics (/proc/net/*, link stats64, qdiscs)
    ipstats/       per-peer TCP counter deltas (raw sock_diag + destroy multicast), residual
    addresses.py   the host's own addresses per namespace its sources read (rtnetlink, kept
                   current on address changes), published in status.addresses / status.netns
    control.py     the agent's control server (requests on netevents.v1.control.<site>.<host>)
    kernel/        plumbing the sources share (netlink, tracefs, namespaces, /proc/net,
                   kallsyms); it imports no source

Each source folder holds its collector, its sans-IO parser, a sample config and a README;
``SOURCES`` below is the registry the command line and config file use.
"""

SOURCES: dict[str, str] = {
    "netstat": "netevents.agent.netstat:build",
    "drops": "netevents.agent.drops:build",
    "capture": "netevents.agent.capture:build",
    "ipstats": "netevents.agent.ipstats:build",
}
"""Source name -> ``module:factory``; the factory takes (section dict, AgentConfig) -> Collector."""
