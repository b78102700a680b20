"""netevents: fleet-wide network loss observability for Linux.

Map of the package (the library: what agents and subscribers both import):

    errors.py      the exception tree (ConfigError, CodecError, BusError, CapabilityError, ...)
    events.py      the v1 event kinds as typed records; the JSON Schemas are generated from it
    codec.py       sans-IO msgpack batch envelope: encode_batch, decode_batch, Batch
    wire.py        the typed decoders built from events.py (validate while decoding, bounded)
    subjects.py    subject names and the token rule for kind/site/host
    sequence.py    sans-IO sequence accounting: batches missed per (host, run, kind)
    bus/           NATS: connect(), EmbeddedServer, streams, publish, Subscription (its sans-IO
                   Intake: accept, sequences, announced counts)
    pcapng.py      sans-IO PcapNG block writer and reader
    auth.py        per-host NATS users and the server's authorization block
    memory.py      an in-memory bus with the same interface, for unit tests and notebooks
    trio.py        the consumer API for trio programs (through trio-asyncio)
    consumers/     subscribers we ship: tail, view (top), metrics, verify, correlate/, archive/
    app/           the application layer: the `netevents` command, its terminal UI, the demo.
                   Nothing else in this package imports it (tests/test_layout.py)

Host-side collectors live in ``netevents.agent`` (which the library never imports).

The consumer API for your own programs:

    async with netevents.connect("nats://127.0.0.1:4222") as bus:
        async for batch in bus.subscribe(kinds=["drop"], hosts=["web-*"]):
            print(batch.host, batch.missed, list(batch.rows()))
"""

__version__ = "0.1.0"

from .bus import Bus, EmbeddedServer, Subscription, connect  # noqa: E402
from .codec import Batch, decode_batch, encode_batch  # noqa: E402
from .errors import (  # noqa: E402
    BusError,
    CapabilityError,
    CodecError,
    ConfigError,
    MalformedError,
    NeteventsError,
    OversizeError,
    SchemaError,
    SubjectError,
    VersionError,
)
from .events import KINDS  # noqa: E402

__all__ = [
    "KINDS", "Batch", "Bus", "BusError", "CapabilityError", "CodecError", "ConfigError",
    "EmbeddedServer", "MalformedError", "NeteventsError", "OversizeError", "SchemaError",
    "SubjectError", "Subscription", "VersionError", "__version__", "connect", "decode_batch",
    "encode_batch",
]
