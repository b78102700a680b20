"""Subscribers we ship: each a thin asyncio shell around a sans-IO core.

    view.py    FleetView: tallies and the text of `netevents top` / `netevents up`
    tail.py    `netevents tail`: events as lines or JSON
    archive/   `netevents archive`: frames, capture gaps and dropped packets into rotating PcapNG
    correlate/ `netevents correlate`: drop storms, path loss and peer incidents across hosts
    ringorder.py  RingOrderHold: a ring's frame batches wait for the gap records they announce
    verify.py  `netevents verify`: an archive file checked with tshark and capinfos
    metrics.py `netevents metrics`: the Prometheus exporter of the fleet view
    filters.py EventFilter: the client-side filters of tail, top, query and extract
    query.py   WindowSummary: the exact sums `netevents query` prints over a window
    extract.py Extractor: frames and gaps of a window into one PcapNG (the archive core)
"""
