"""The binary ring-page reader against the kernel's own text rendering of the same records
(both recorded on this machine from one instance: ``trace`` is the non-consuming text view,
then the raw pages were read from ``per_cpu/cpuN/trace_pipe_raw``)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from netevents.agent.drops.aggregate import DropAggregator
from netevents.agent.drops.rawtrace import KfreeSkbLayout, RawPageParser
from netevents.agent.drops.tracepoint import KfreeSkbParser, reason_table
from netevents.agent.kernel.kallsyms import Kallsyms

DATA = Path(__file__).parent / "testdata"
PAGE = 4096


def _raw_parser(exclude=frozenset()) -> tuple[RawPageParser, DropAggregator]:
    fmt = (DATA / "kfree_skb_format.txt").read_text()
    ks = Kallsyms.from_lines((DATA / "kallsyms_excerpt.txt").read_text().splitlines())
    agg = DropAggregator("tracepoint")
    return RawPageParser(agg, KfreeSkbLayout.from_format(fmt), reason_table(fmt), ks.resolve,
                         exclude=exclude), agg


def _by_signature(events: list[dict]) -> dict[tuple, dict]:
    return {(e["location"], e["reason"], e["proto"]): e for e in events}


def test_raw_pages_agree_with_the_kernels_text():
    text_agg = DropAggregator("tracepoint")
    tp = KfreeSkbParser(text_agg)
    tp.feed((DATA / "kfree_skb_trace_same_events.txt").read_bytes())
    tp.finish()
    assert tp.bad_lines == 0
    text = _by_signature(text_agg.flush())

    raw, agg = _raw_parser()
    pages = (DATA / "kfree_skb_raw_pages.bin").read_bytes()
    for i in range(0, len(pages), PAGE):
        raw.feed_page(pages[i:i + PAGE])
    got = _by_signature(agg.flush())
    assert raw.bad_pages == 0 and raw.other == 0
    assert set(got) == set(text)
    assert raw.records == tp.records >= 425
    for sig, e in got.items():
        t = text[sig]
        assert e["count"] == t["count"], sig
        # text prints microseconds (ns2usecs rounds); the pages carry nanoseconds
        assert (e["first_ts"] + 500) // 1000 * 1000 == t["first_ts"], sig
        assert (e["last_ts"] + 500) // 1000 * 1000 == t["last_ts"], sig
    assert got[("nft_do_chain+0x46f", "NETFILTER_DROP", 2048)]["count"] == 300


def test_exclude_and_layout_errors():
    raw, agg = _raw_parser(exclude=frozenset({"NETFILTER_DROP"}))
    pages = (DATA / "kfree_skb_raw_pages.bin").read_bytes()
    for i in range(0, len(pages), PAGE):
        raw.feed_page(pages[i:i + PAGE])
    assert raw.excluded == 300
    assert all(e["reason"] != "NETFILTER_DROP" for e in agg.flush())
    with pytest.raises(ValueError):
        KfreeSkbLayout.from_format("name: kfree_skb\nformat:\n")


@pytest.mark.parametrize("damage", ["short", "commit_too_big", "zero_length_event", "garbage"])
def test_damaged_pages_never_raise_and_are_counted(damage):
    raw, agg = _raw_parser()
    page = bytearray((DATA / "kfree_skb_raw_pages.bin").read_bytes()[:PAGE])
    if damage == "short":
        page = page[:10]
    elif damage == "commit_too_big":
        struct.pack_into("<q", page, 8, 1 << 20)
    elif damage == "zero_length_event":
        struct.pack_into("<II", page, 16, 0, 0)
    else:
        page[16:] = bytes((i * 37) & 0xFF for i in range(PAGE - 16))
    raw.feed_page(bytes(page))
    agg.flush()
    assert raw.bad_pages == 1 if damage != "commit_too_big" else raw.bad_pages >= 1
    if damage != "commit_too_big":  # a commit past the page still has its real records first
        assert raw.records == 0
