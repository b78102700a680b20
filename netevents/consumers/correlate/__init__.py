"""Correlate across hosts: drop storms, path loss between hosts, peer views -> ``incident`` events.

    fingerprint.py  what of a frame no hop changes: the key frames are matched by
    directory.py    HostDirectory: addresses, machines (boot ids), netns inodes, missed
                    batches; drop attribution (host, machine-wide, or a namespace on the path)
    ledger.py       DropLedger: recent drops per machine, totals, sampled dropped packets;
                    which drop can explain a lost frame
    coverage.py     CaptureCoverage: how far each host's capture is known and where it was
                    blind (gap records, missed batches; frame batches wait for the gap records
                    they announce in a consumers.ringorder.RingOrderHold)
    storms.py       StormTracker: drop_storm incidents
    paths.py        PathLoss: departures matched with arrivals, verdicts per pair, path_loss
                    incidents
    peers.py        PeerViews: peer incidents from ipstat
    partition.py    partition_of, parse_partition, Partition: n members sharing the work
    correlator.py   Correlator: the sans-IO core composing the pieces (feed, tick)
    service.py      run_correlate: the asyncio shell (``netevents correlate``)

Sans-IO core: :class:`Correlator` is fed decoded batches (``feed``) and the caller's clock
(``tick(now)``) and returns :class:`~netevents.events.IncidentEvent` records; it never touches
a socket, a loop or a clock. Every piece of state is bounded and what is evicted is counted
(``evicted``). The thin asyncio shell :func:`run_correlate` subscribes, feeds, ticks and
publishes ``incident`` batches.

Three incident types:

drop_storm
    The same (reason, location) seen on >= ``storm_hosts`` hosts within ``window`` seconds:
    one incident listing the hosts, their counts and first/last seen (re-published only when
    more hosts join the same episode, with the same ``episode`` id).
path_loss
    Frame summaries seen leaving host A (``dir`` 4, outgoing) and arriving at host B are matched
    by a fingerprint of fields no hop changes (see :func:`fingerprint`). After ``grace`` seconds
    an unmatched departure is judged: *unknown* when B's capture had a gap (or B's frame batches
    a sequence hole) covering its time, else *lost*; a loss that coincides with a drop event
    attributed to B (or machine-wide on B's machine) names that reason. A departure is judged
    only once B's capture is known past it: B's frames published a grace period later, *and*
    every gap record B's ring had made by then (frame batches count them in ``gaps_before``;
    gap records travel in their own batches and can arrive after the frames that follow them).
peer
    Host A's per-IP retransmits toward B's address next to B's drops and B's per-IP view of A.
"""

from .correlator import Correlator
from .coverage import CaptureCoverage
from .directory import KERNEL_WIDE, HostDirectory
from .fingerprint import addr_text, dropped_packet_fingerprint, fingerprint
from .ledger import Drop, DropLedger, can_explain_path_loss
from .partition import Partition, parse_partition, partition_of
from .paths import Arrival, Departure, PairStats, PathLoss
from .peers import PeerViews
from .service import INPUT_KINDS, run_correlate
from .storms import STORM_HOSTS, STORM_LISTED, Storm, StormEntry, StormTracker

__all__ = [
    "INPUT_KINDS", "KERNEL_WIDE", "STORM_HOSTS", "STORM_LISTED", "Arrival", "CaptureCoverage",
    "Correlator", "Departure", "Drop", "DropLedger", "HostDirectory", "PairStats", "Partition",
    "PathLoss", "PeerViews", "Storm", "StormEntry", "StormTracker", "addr_text",
    "can_explain_path_loss", "dropped_packet_fingerprint", "fingerprint", "parse_partition",
    "partition_of", "run_correlate",
]
