"""Subscribers we ship: each a thin asyncio shell around a sans-IO core.

    view.py    FleetView: tallies and the text of `netevents top` / `netevents up`
    tail.py    `netevents tail`: events as lines or JSON
"""
