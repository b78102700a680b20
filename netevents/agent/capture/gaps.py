"""Gap accounting for a capture ring (sans-IO): where the capture itself lost frames, and how many.

Kernel semantics (net/packet/af_packet.c, TPACKET_V3):

* ``tpacket_rcv`` either writes a frame into the current block (``tp_packets++``) or, when no
  block is free (the queue is *frozen*: the next block is still owned by user space), drops it
  (``tp_drops++``). Frames refused by the socket filter count in neither.
* ``PACKET_STATISTICS`` is clear-on-read and reports ``tp_packets`` = frames written + frames
  dropped (``st.stats3.tp_packets += drops``), ``tp_drops``, and ``tp_freeze_q_cnt`` (times the
  queue froze).
* A block is closed with ``TP_STATUS_LOSING`` when drops were pending (unread) at that moment.

So over a run (all blocks drained after the socket stopped receiving, stats read last):

    sum(gap.lost) == sum(tp_drops)
    frames walked + sum(gap.lost) == sum(tp_packets)

Where the drops sit: V3 drops only while frozen, and the queue freezes only at a block
boundary, when the kernel wants the slot of the oldest block user space still holds. A freeze
on block ``f`` (sequence number ``seq_num``) of a ring of ``N`` blocks puts its drops between
the last frame of block ``f + N - 1`` and the first frame of block ``f + N`` (the block the
kernel opens in ``f``'s slot once it is released). The kernel can only freeze on ``f`` once it
has refilled and retired the slot before it, so the shell knows, at each read, the newest
block a freeze can have reached (the *frontier*):

* read while holding ``h`` (before releasing it): ``h`` if the slot of ``h - 1`` is back in
  user space, else ``h - 1``;
* read just after releasing ``h``: ``h + 1`` if the slot of ``h`` is back in user space,
  else ``h``.

The shell reads twice per retired block (before and after its release), which makes every
window in which a read could mix the end of one freeze with the start of the next a few
microseconds wide; such reads are counted (``ambiguous_reads``), the totals stay exact. A CPU
that found the queue frozen increments ``tp_drops`` after releasing the ring lock, so a drop can
miss the read that followed the release: drops in a read that counted no new freeze go to the
boundary of the last freeze while it is still ahead (``late_drops``).

Coalescing: drops are summed per block boundary, so heavy loss gives at most one record per
block however many frames were lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from netevents.events import GapEvent


@dataclass(slots=True)
class _Pending:
    lost: int = 0
    freezes: int = 0
    losing: bool = False


class GapAccountant:
    """Frame sequence numbers and gap records for one ring (one interface, one worker)."""

    def __init__(self, iface: str, worker: int, block_nr: int, *,
                 source: str = "packet_statistics") -> None:
        self.iface = iface
        self.worker = worker
        self.block_nr = block_nr
        self.source = source
        self.next_frame = 0
        """Sequence number the next captured frame gets (frames are numbered 0, 1, 2, ...)."""
        self.last_ts: int | None = None
        self.pending: dict[int, _Pending] = {}
        """Block sequence number -> drops that sit just before that block."""
        self.packets = 0
        self.drops = 0
        self.freezes = 0
        self.lost_reported = 0
        self.records_reported = 0
        """Gap records made so far: frame batches carry it (``gaps_before``) so a reader can
        tell whether it has seen every gap that sits before their frames."""
        self.losing_blocks = 0
        self.ambiguous_reads = 0
        self.late_drops = 0
        self._last_target: int | None = None
        self._seen_seq = -1
        self._frontier_floor = -1

    # -- what the ring shows -------------------------------------------------------------------
    def on_block(self, seq: int, num_pkts: int, first_ts: int | None, last_ts: int | None,
                 losing: bool = False) -> tuple[int, list[GapEvent]]:
        """A retired block is about to be published: returns (its first frame number, gaps
        that sit before it). Call in ring order, before :meth:`on_stats` for this block."""
        if losing:
            self.losing_blocks += 1
        self._seen_seq = seq
        gaps: list[GapEvent] = []
        due = [s for s in self.pending if s <= seq]
        if due:
            lost = freezes = 0
            for s in sorted(due):
                p = self.pending.pop(s)
                lost += p.lost
                freezes += p.freezes
            if lost:
                gaps.append(self._gap(lost, freezes, first_ts if num_pkts else None))
        first = self.next_frame
        self.next_frame += num_pkts
        if num_pkts and last_ts is not None:
            self.last_ts = last_ts
        return first, gaps

    def on_stats(self, packets: int, drops: int, freezes: int, frontier: int | None) -> None:
        """One PACKET_STATISTICS read (clear-on-read deltas).

        ``frontier``: sequence number of the newest block the kernel can have frozen on by the
        time of the read (the shell works it out from which slots it has released and whether
        the kernel has retired them again; see the module docstring). Drops of a freeze on
        block ``f`` sit before block ``f + N``. ``None``: the final read after the ring was
        drained; its drops go at the end.
        """
        self.packets += packets
        self.drops += drops
        self.freezes += freezes
        if not drops and not freezes:
            return
        if frontier is None:
            target = -1
        elif not freezes and self._last_target is not None and self._last_target > self._seen_seq:
            # No new freeze in this read: these are the last drops of the freeze already
            # counted (a CPU that found the queue frozen increments tp_drops after dropping
            # the ring lock, so a drop can miss the read that followed the release).
            target = self._last_target
            self.late_drops += drops
        else:
            target = frontier + self.block_nr
            if freezes and drops and frontier > self._frontier_floor:
                self.ambiguous_reads += 1
            if freezes:
                self._last_target = target
        p = self.pending.setdefault(target, _Pending())
        p.lost += drops
        p.freezes += freezes

    def set_frontier_floor(self, seq: int) -> None:
        """The oldest frontier the shell would have reported for this read (for the
        ``ambiguous_reads`` count: a read whose frontier had advanced past it may mix the
        end of one freeze with the start of the next)."""
        self._frontier_floor = seq

    def finish(self) -> list[GapEvent]:
        """End of the run: drops whose following frame never came, as one trailing record."""
        lost = sum(p.lost for p in self.pending.values())
        freezes = sum(p.freezes for p in self.pending.values())
        self.pending.clear()
        if not lost:
            return []
        gap = self._gap(lost, freezes, None)
        gap.before_frame = None
        return [gap]

    # -- helpers ----------------------------------------------------------------------------
    def _gap(self, lost: int, freezes: int, before_ts: int | None) -> GapEvent:
        self.lost_reported += lost
        self.records_reported += 1
        k = self.next_frame - 1
        return GapEvent(
            iface=self.iface, worker=self.worker, lost=lost, cause="ring_full",
            after_frame=k if k >= 0 else None, before_frame=self.next_frame,
            after_ts=self.last_ts, before_ts=before_ts, source=self.source, freezes=freezes)

    def check(self, frames_walked: int) -> str | None:
        """The run invariants; None if they hold, else a sentence saying which does not."""
        if self.lost_reported + sum(p.lost for p in self.pending.values()) != self.drops:
            return f"gap records sum to {self.lost_reported}, kernel tp_drops {self.drops}"
        if frames_walked + self.drops != self.packets:
            return (f"{frames_walked} frames + {self.drops} drops != kernel tp_packets "
                    f"{self.packets}")
        return None


def describe(gap: GapEvent) -> str:
    """The one-line form: "N frames lost between frame k and frame k+1 on IFACE worker W"."""
    return (f"{gap.lost} frames lost between frame {gap.after_frame} and frame "
            f"{gap.before_frame} on {gap.iface} worker {gap.worker}")


class RxqOvflCounter:
    """``SO_RXQ_OVFL`` for a non-ring socket: each datagram's cmsg carries the socket's
    cumulative ``sk_drops`` (a __u32); the deltas, placed between datagrams, are gaps."""

    def __init__(self, iface: str, worker: int = 0) -> None:
        self.iface = iface
        self.worker = worker
        self.last: int | None = None
        self.next_frame = 0
        self.last_ts: int | None = None
        self.drops = 0

    def on_datagram(self, cumulative: int | None, ts: int) -> GapEvent | None:
        """One received datagram with its cmsg value (None if the kernel sent none, which it
        does while the counter is 0). Returns the gap before this datagram, if any."""
        cum = cumulative or 0
        prev = self.last if self.last is not None else 0
        delta = (cum - prev) & 0xFFFFFFFF  # the kernel counter is 32 bits and may wrap
        self.last = cum
        gap = None
        if delta:
            self.drops += delta
            k = self.next_frame - 1
            gap = GapEvent(iface=self.iface, worker=self.worker, lost=delta, cause="rxq_ovfl",
                           after_frame=k if k >= 0 else None, before_frame=self.next_frame,
                           after_ts=self.last_ts, before_ts=ts, source="so_rxq_ovfl")
        self.next_frame += 1
        self.last_ts = ts
        return gap
