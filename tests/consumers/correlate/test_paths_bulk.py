"""A frame batch matched whole (paths.match_whole, and _cfinger.bulk in C) changes the state
exactly as the frame-by-frame loop of PathLoss.frames does, and the C matching equals its
Python reference on any input, including what the codec would never give."""

from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netevents.codec import Batch
from netevents.consumers.correlate import Correlator
from netevents.consumers.correlate import paths as paths_mod
from netevents.consumers.correlate.paths import Departure, match_whole

NS = 1_000_000_000
A, B, C = b"\x0a\0\0\1", b"\x0a\0\0\2", b"\x0a\0\0\3"
HOSTS = {A: "ha", B: "hb", C: "hc"}


def _frames(host: str, rows: list[tuple], t1: int) -> Batch:
    """rows: (ts, dir, src, dst, ip_id, l4, length, ts_src)"""
    cols = {"ts": [], "dir": [], "src": [], "dst": [], "ip_id": [], "l4": [], "len": [],
            "ts_src": [], "sport": [], "dport": []}
    for ts, d, src, dst, ip_id, l4, length, tss in rows:
        for name, v in zip(("ts", "dir", "src", "dst", "ip_id", "l4", "len", "ts_src"),
                           (ts, d, src, dst, ip_id, l4, length, tss), strict=True):
            cols[name].append(v)
        cols["sport"].append(1000)
        cols["dport"].append(2000)
    return Batch(kind="frame", site="s", host=host, run="r", seq=1, t0=0, t1=t1, events=cols)


# a batch: who publishes it, then its frames; ip ids from a small range so that batches
# share frames (a departure and its arrival, a duplicate, an arrival before its departure)
_ROW = st.tuples(st.integers(0, 3000), st.sampled_from([4, 4, 0, 0, 1]), st.sampled_from([A, A, B, C]),
                 st.sampled_from([B, B, A, C]), st.integers(0, 40), st.sampled_from([17, 17, 6, 1]),
                 st.sampled_from([100, 100, 9000]), st.sampled_from([1, 1, 2]))
_BATCH = st.tuples(st.sampled_from(list(HOSTS.values())), st.lists(_ROW, min_size=0, max_size=10),
                   st.booleans(), st.sampled_from([None, None, 0, 1, 2]))
"""(host, rows, all between one pair of addresses, echo): echo k: the frames of the batch before
arriving at ``host`` (``dir`` 0, later stamps), every k-th left out (0: none)."""


def _uniform(host: str, rows: list, toward: bool) -> list:
    """Most batches of a fleet: every frame between the same two addresses, one direction."""
    if not toward or not rows:
        return rows
    d = rows[0][1]
    return [(ts, d, rows[0][2], rows[0][3], ip, l4, n, s) for ts, _d, _s, _t, ip, l4, n, s in rows]


def _state(corr: Correlator) -> tuple:
    p = corr.paths
    return (list(p.departures.items()), list(p.arrivals.items()),
            {k: (v.delivered, list(v.delays_ns), dict(v.ts_sources), v.first_ts, v.last_ts)
             for k, v in p.pairs.items()}, dict(corr.counts), dict(corr.evicted),
            dict(corr.directory.addr_host))


@settings(max_examples=200, deadline=None)
@given(st.lists(_BATCH, max_size=12), st.sampled_from([5, 30, 10_000]))
def test_whole_batches_change_the_state_as_the_frame_loop_does(batches, max_frames):
    fed = []
    rows = []
    for host, new_rows, toward, echo in batches:
        if echo is not None and rows:
            rows = [(ts + 7 * i + 1, 0, src, dst, ip, l4, n, tss + 1)
                    for i, (ts, _d, src, dst, ip, l4, n, tss) in enumerate(rows)
                    if not echo or i % (echo + 1)]
        else:
            rows = _uniform(host, new_rows, toward)
        fed.append(_frames(host, rows, 1))
    states = []
    for matcher in (paths_mod._match_whole, match_whole, lambda *a: None):
        corr = Correlator(max_frames=max_frames)
        saved = paths_mod._match_whole
        paths_mod._match_whole = matcher
        try:
            for b in fed:
                corr.feed(b)
        finally:
            paths_mod._match_whole = saved
        states.append(_state(corr))
    assert states[0] == states[2]   # what runs (C when built) = the loop
    assert states[1] == states[2]   # the Python reference = the loop


def test_a_fleet_batch_is_taken_whole_and_matched():
    """The common case really takes the whole path (else the test above proves nothing)."""
    taken = []
    corr = Correlator()
    saved = paths_mod._match_whole

    def spy(*args):
        got = saved(*args)
        taken.append(got)
        return got

    paths_mod._match_whole = spy
    try:
        corr.feed(_frames("ha", [(10 + i, 4, A, B, i, 17, 100, 1) for i in range(8)], 100))
        corr.feed(_frames("hb", [(50 + i, 0, A, B, i, 17, 100, 2) for i in range(8)], 100))
    finally:
        paths_mod._match_whole = saved
    assert taken[0] is True
    sender, delays, first, last, sources = taken[1]
    assert (sender, delays, first, last, sources) == ("ha", [40] * 8, 10, 17, (1, 2))
    p = corr.pairs[("ha", "hb")]
    assert (p.delivered, dict(p.ts_sources)) == (8, {"software->hardware": 8})
    assert not corr.paths.departures


cfinger = pytest.importorskip("netevents.consumers.correlate._cfinger",
                              reason="the C fingerprint extension is not built")

_ODD = st.sampled_from([None, 1.5, "x", True, 2**70, -1, b"\0"])
_KEY = st.integers(0, 12)


def _col(values, n, odd):
    return [odd if odd is not None and i == n // 2 else v for i, v in enumerate(values)]


@settings(max_examples=400, deadline=None)
@given(st.lists(_KEY, max_size=6), st.lists(_KEY, max_size=4), st.lists(_KEY, max_size=9),
       st.sampled_from([0, 4, 1]), st.booleans(), st.one_of(st.none(), _ODD),
       st.sampled_from(["fps", "ts", "ts_src", "dir", "src", "l4", "dep_ts"]),
       st.sampled_from([3, 20]), st.sampled_from(["ha", "hb"]), st.booleans())
def test_the_c_matching_equals_its_python_reference(dep_keys, arr_keys, keys, d, same_src, odd,
                                                   where, max_frames, host, same_sender):
    def start():
        deps, arrs = OrderedDict(), OrderedDict()
        for k in dep_keys:
            ts = odd if where == "dep_ts" and odd is not None and k == dep_keys[0] else 100 + k
            sender = "ha" if same_sender or k % 2 else "hc"
            deps[k] = Departure(sender, ts, k % 3, "10.0.0.2", "10.0.0.1", False)
        for k in arr_keys:
            arrs[k] = ("hb", 200 + k, 1)
        return deps, arrs

    n = len(keys)
    cols = {"fps": list(keys), "ts": [300 + k for k in keys], "ts_src": [k % 2 for k in keys],
            "dir": [d] * n, "src": [A if same_src or i % 2 else C for i in range(n)],
            "dst": [B] * n, "l4": [17] * n}
    if where in cols:
        cols[where] = _col(cols[where], n, odd)
    results = []
    for fn in (cfinger.bulk, match_whole):
        deps, arrs = start()
        try:
            got = fn(deps, arrs, max_frames, Departure, host, cols["fps"], cols["ts"],
                     cols["ts_src"], cols["dir"], cols["src"], cols["dst"], cols["l4"],
                     "10.0.0.1", "10.0.0.2")
        except Exception as exc:  # noqa: BLE001 - both must fail alike, if at all
            got = type(exc)
        results.append((got, list(deps.items()), list(arrs.items()),
                        [type(v) for v in deps.values()]))
    assert results[0] == results[1]


def test_the_c_matching_refuses_a_departure_type_it_cannot_make():
    with pytest.raises(TypeError):
        cfinger.bulk(OrderedDict(), OrderedDict(), 10, dict, "h", [1], [1], [0], [4], [A], [B],
                     [17], "a", "b")
    with pytest.raises(TypeError):
        cfinger.bulk(OrderedDict(), OrderedDict(), 10, Departure, "h", [1])
