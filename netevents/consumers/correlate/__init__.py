"""Correlate across hosts: drop storms, path loss between hosts, peer views -> ``incident`` events.

    fingerprint.py  what of a frame no hop changes: the key frames are matched by
    directory.py    HostDirectory: addresses (each agent's status says which are its own, per
                    namespace; frames and ipstat ``local`` add to it), machines (boot ids),
                    netns inodes, missed batches, how far each host's drops are in; drop
                    attribution (host, machine-wide, or a namespace on the path)
    ledger.py       DropLedger: recent drops per machine, totals, sampled dropped packets;
                    which drop can explain a lost frame
    coverage.py     CaptureCoverage: how far each host's capture is known and where it was
                    blind (gap records, missed batches; frame batches wait for the gap records
                    they announce in a consumers.ringorder.RingOrderHold)
    storms.py       StormTracker: drop_storm incidents
    paths.py        PathLoss: departures matched with arrivals, verdicts per pair, path_loss
                    incidents
    peers.py        PeerViews: peer episodes (who is hurting whom) from ipstat and the peer
                    host's drops on the pair's flows
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
    Who is hurting whom: host A's per-IP retransmits, timeouts and resets toward an address
    and -- when B's status lists that address as its own (at every level: no diagnostics
    needed) -- B's drops on the flows between them (eBPF drop events carry the flow), by
    reason and location, plus B's per-IP view of A. An incident is an episode of (A, peer):
    published when it opens, at most once per ``report_interval`` while it lasts, and when
    it closes (quiet for ``window``). Each publication carries the figures of its whole span
    (``first_ts`` .. ``last_ts``) and what it adds (``new``): the closing figures of a pair's
    episodes, or the sum of every publication's ``new``, are what A published (a field A did
    not publish is absent, never 0). A publication covers only the windows B's drops are
    known to have reached (B's drop batches, or a status that counted every drop batch B
    made); after ``max(10 s, 5 x grace)`` it goes out anyway with ``drops_late``, and drops
    that come later are added to the next publication (``late_drops``).

path_loss labels a frame toward a host that captures nothing as *not captured at the
receiver* (``unknown_uncaptured``), never as a capture gap.
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
