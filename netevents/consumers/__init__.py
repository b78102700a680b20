"""Subscribers we ship: each a thin asyncio shell around a sans-IO core.

    view.py    FleetView: tallies and the text of `netevents top` / `netevents up`
    tail.py    `netevents tail`: events as lines or JSON
    archive.py `netevents archive`: frames, capture gaps and dropped packets into rotating PcapNG
    verify.py  `netevents verify`: an archive file checked with tshark and capinfos
"""
