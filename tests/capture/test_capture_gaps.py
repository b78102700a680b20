"""GapAccountant against a model of the TPACKET_V3 ring (net/packet/af_packet.c semantics), and
RxqOvflCounter. Hypothesis drives arbitrary interleavings of arrivals, timer retirements and
user-space block processing; the invariants are the ones the kernel's counters must satisfy."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.capture.gaps import GapAccountant, RxqOvflCounter, describe


class KernelRing:
    """The V3 receive path: frames go into the current block; a full block is retired and the
    next slot opened, or, if user space still holds it, the queue freezes and frames are
    dropped until it is released. PACKET_STATISTICS is clear-on-read, tp_packets += drops."""

    def __init__(self, block_nr: int, capacity: int) -> None:
        self.n, self.cap = block_nr, capacity
        self.blocks: list[dict] = [{"user": False, "frames": [], "seq": 0} for _ in range(block_nr)]
        self.cur = 0
        self.next_seq = 1
        self.blocks[0]["seq"] = self._seq()
        self.frozen = False
        self.packets = self.drops = self.freezes = 0
        self.arrived = 0

    def _seq(self) -> int:
        s = self.next_seq
        self.next_seq += 1
        return s

    def _open(self, i: int) -> None:
        self.cur = i
        self.blocks[i] = {"user": False, "frames": [], "seq": self._seq()}
        self.frozen = False

    def _retire_and_dispatch(self) -> None:
        self.blocks[self.cur]["user"] = True
        nxt = (self.cur + 1) % self.n
        if self.blocks[nxt]["user"]:
            self.cur = nxt
            self.frozen = True
            self.freezes += 1
        else:
            self._open(nxt)

    def arrive(self) -> None:
        fid = self.arrived
        self.arrived += 1
        if self.frozen:
            if self.blocks[self.cur]["user"]:
                self.drops += 1
                return
            self._open(self.cur)
        blk = self.blocks[self.cur]
        if len(blk["frames"]) >= self.cap:
            self._retire_and_dispatch()
            if self.frozen:
                self.drops += 1
                return
            blk = self.blocks[self.cur]
        blk["frames"].append(fid)
        self.packets += 1

    def timer(self) -> None:
        if not self.frozen and self.blocks[self.cur]["frames"]:
            self._retire_and_dispatch()

    def read_stats(self) -> tuple[int, int, int]:
        out = (self.packets + self.drops, self.drops, self.freezes)
        self.packets = self.drops = self.freezes = 0
        return out


class User:
    """What the collector does, against the model."""

    def __init__(self, ring: KernelRing) -> None:
        self.ring = ring
        self.next = 0
        self.acc = GapAccountant("eth0", 3, ring.n)
        self.frames: list[int] = []
        self.gaps = []

    def process_one(self) -> bool:
        blk = self.ring.blocks[self.next]
        if not blk["user"]:
            return False
        frames = blk["frames"]
        _first, gaps = self.acc.on_block(blk["seq"], len(frames), frames[0] if frames else None,
                                         frames[-1] if frames else None)
        self.gaps += gaps
        self.frames += frames
        blk["user"] = False  # release, then read
        self.acc.on_stats(*self.ring.read_stats(), blk["seq"], refilled=False)
        self.next = (self.next + 1) % self.ring.n
        return True

    def finish(self) -> None:
        self.ring.timer()
        while self.process_one():
            pass
        self.acc.on_stats(*self.ring.read_stats(), None)
        self.gaps += self.acc.finish()


actions = st.lists(st.tuples(st.sampled_from(["arrive", "timer", "user"]), st.integers(1, 60)),
                   max_size=60)


@settings(max_examples=300, deadline=None)
@given(block_nr=st.integers(1, 4), capacity=st.integers(1, 6), script=actions)
def test_gaps_sum_to_tp_drops_and_sit_exactly_where_the_frames_went_missing(block_nr, capacity,
                                                                            script):
    ring = KernelRing(block_nr, capacity)
    user = User(ring)
    total_drops = total_packets = 0
    for action, count in script:
        for _ in range(count):
            if action == "arrive":
                ring.arrive()
            elif action == "timer":
                ring.timer()
                break
            elif not user.process_one():
                break
    user.finish()
    acc = user.acc
    total_drops, total_packets = acc.drops, acc.packets
    assert total_packets == ring.arrived
    assert sum(g.lost for g in user.gaps) == total_drops
    assert len(user.frames) + total_drops == total_packets
    assert acc.check(len(user.frames)) is None
    # Placement: frame ids are arrival numbers, so a hole of n ids between captured frames k
    # and k+1 must be exactly one gap of n between them (and one trailing gap at the end).
    expected = {}
    for k in range(1, len(user.frames)):
        hole = user.frames[k] - user.frames[k - 1] - 1
        if hole:
            expected[k] = hole
    if user.frames and user.frames[0]:
        expected[0] = user.frames[0]
    trailing = ring.arrived - (user.frames[-1] + 1 if user.frames else 0)
    got = {g.before_frame: g.lost for g in user.gaps if g.before_frame is not None}
    assert got == expected
    assert sum(g.lost for g in user.gaps if g.before_frame is None) == trailing
    # Coalesced: never more than one record per block boundary (plus the trailing one).
    assert len(user.gaps) <= ring.next_seq
    for g in user.gaps:
        if g.before_frame is not None:
            assert g.after_frame == (g.before_frame - 1 if g.before_frame else None)


def test_heavy_loss_is_one_record_per_boundary():
    ring = KernelRing(2, 4)
    user = User(ring)
    for _ in range(10):
        for _ in range(10_000):
            ring.arrive()
        user.process_one()
        user.process_one()
    user.finish()
    assert sum(g.lost for g in user.gaps) == user.acc.drops > 90_000
    assert len(user.gaps) <= 21
    assert describe(user.gaps[0]).startswith(f"{user.gaps[0].lost} frames lost between frame ")


def test_rxq_ovfl_deltas_wrap_and_missing_cmsg():
    c = RxqOvflCounter("lo")
    assert c.on_datagram(None, 1) is None           # no cmsg while sk_drops is 0
    gap = c.on_datagram(5, 2)
    assert gap is not None and gap.lost == 5 and (gap.after_frame, gap.before_frame) == (0, 1)
    assert (gap.after_ts, gap.before_ts, gap.cause) == (1, 2, "rxq_ovfl")
    assert c.on_datagram(5, 3) is None
    c.last = 0xFFFFFFFE
    gap = c.on_datagram(3, 4)                        # 32-bit counter wrapped
    assert gap is not None and gap.lost == 5
