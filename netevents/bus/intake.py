"""Sans-IO intake: which messages a subscription accepts, and what it knows it did not get.

:class:`Intake` takes one message as ``(subject, data)`` and returns the decoded
:class:`~netevents.codec.Batch`, or None when the message is rejected, filtered out or a
duplicate. It counts rejects by reason, tracks ``seq`` per (host, run, kind) with a
:class:`~netevents.sequence.SequenceTracker`, and learns from ``status`` batches how many
batches each run published. No sockets, no event loop: :class:`~netevents.bus.Subscription`
feeds it from NATS, tests feed it encoded batches.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping

from .. import events as ev
from ..codec import MAX_BATCH_BYTES, Batch, decode_batch
from ..errors import CodecError, SubjectError
from ..lazy import LazyColumns, LazyRows
from ..sequence import REJECTED, SequenceTracker
from ..subjects import host_matches, parse_subject

_LAZY = (LazyColumns, LazyRows)

log = logging.getLogger("netevents.bus")


class Intake:
    """Accept, reject and account for the messages of one subscription.

    ``kinds`` (default: all) and ``hosts`` (globs; default: all) are what the subscriber asked
    for. ``shared`` is for a queue-group member, which receives only part of each sequence.

    Attributes:
        rejected: ``Counter`` of rejected messages by reason (malformed, version, schema,
            oversize, subject, and sequence: an implausible ``seq``, see
            :class:`~netevents.sequence.SequenceTracker`).
        last_error: the message of the most recent rejection.
        tracker: the :class:`~netevents.sequence.SequenceTracker` (``tracker.report()``).
        shared_holes: sequence holes of a queue-group member: batches that went to other members.

    Raises (from the constructor):
        SubjectError: for an unknown kind.
    """

    def __init__(self, kinds: Iterable[str] | None = None, hosts: Iterable[str] | None = None,
                 *, shared: bool = False) -> None:
        self.kinds = tuple(kinds) if kinds else ev.KINDS
        for k in self.kinds:
            if k not in ev.KINDS:
                raise SubjectError(f"unknown kind {k!r} (kinds: {', '.join(ev.KINDS)})")
        self.hosts = tuple(hosts) if hosts else ()
        self.shared = shared
        self.rejected: Counter[str] = Counter()
        self.last_error: str | None = None
        self.tracker = SequenceTracker()
        self.shared_holes = 0
        self._retracted = 0
        self._subjects: dict[str, tuple[str, str, str]] = {}
        """Subjects already parsed (bounded): a fleet's subjects repeat on every batch."""
        self._last: dict[str, LazyColumns | LazyRows] = {}
        """Per kind, the lazy events of the last batch accepted (:meth:`_watch`)."""
        self._read_whole: set[str] = set()
        """Kinds whose events the consumer reads (most columns, or the rows): decoded at once."""

    def accept(self, subject: str, data: bytes) -> Batch | None:
        """Decode one message; return None (and count why) when it is rejected or filtered.

        The accepted batch's ``missed`` is the number of batches of its (host, run, kind) that
        were not received just before it.
        """
        try:
            parsed = self._subjects.get(subject)
            batch = decode_batch(data, max_bytes=MAX_BATCH_BYTES, lazy_events=parsed is None
                                 or parsed[0] not in self._read_whole)
            if parsed is None:
                parsed = parse_subject(subject)
                if len(self._subjects) >= 65536:
                    self._subjects.clear()
                self._subjects[subject] = parsed
            kind, site, host = parsed
            # The subject is what permissions are granted on; a batch must not speak for
            # another host, site or kind than the one it was allowed to publish as.
            if kind != batch.kind or site != batch.site or host != batch.host:
                raise SubjectError(
                    f"batch says {batch.kind}/{batch.site}/{batch.host} but arrived on {subject}")
        except (CodecError, SubjectError) as exc:
            self._reject(getattr(exc, "reason", "subject"), f"rejected message on {subject}: {exc}")
            return None
        if self.hosts and not host_matches(batch.host, self.hosts):
            return None
        missed = self.tracker.observe(batch.host, batch.run, batch.kind, batch.seq)
        if missed == REJECTED:
            self._reject("sequence", f"rejected message on {subject}: seq {batch.seq} of run "
                         f"{batch.run!r} is implausible (the run's last was "
                         f"{self.tracker.last_seq(batch.host, batch.run, batch.kind)})")
            return None
        if missed < 0:
            return None  # duplicate of a batch already delivered
        if self.tracker.retracted != self._retracted:
            # The run's status proved an earlier batch's seq false (delivered before it could
            # be known): counted as a sequence reject; this batch, a real one, goes on.
            self._retracted = self.tracker.retracted
            self._reject("sequence", f"message on {subject} before seq {batch.seq} of run "
                         f"{batch.run!r}: its seq was above what the run's status announced")
        if self.shared and missed:
            self.shared_holes += missed
            missed = 0
        batch.missed = missed
        if type(batch.events) in _LAZY:
            self._watch(batch.kind, batch.events)
        # A member's tail is the other members' share, so it does not follow announcements.
        if batch.kind == "status" and not self.shared:
            self._announce(batch)
        return batch

    def _watch(self, kind: str, events: LazyColumns | LazyRows) -> None:
        """Learn whether the consumer reads the events of ``kind``'s batches (the last one it
        was given): one that read half of the columns or more, or the rows (a correlator reads
        every column of every frame batch, and the rows of every other kind), has that kind
        decoded in one pass from then on, which costs about half of the C check followed by the
        lazy events' own decoding; a consumer that reads none (a relay, a counter) keeps the
        lazy events, which cost it nothing."""
        last = self._last.get(kind)
        if last is not None and (read := last.decoded) and read * 2 >= len(last):
            self._read_whole.add(kind)
        self._last[kind] = events

    def _reject(self, reason: str, message: str) -> None:
        self.rejected[reason] += 1
        self.last_error = message
        n = self.rejected[reason]
        if n & (n - 1) == 0:  # log the 1st, 2nd, 4th, 8th ... of each reason
            log.warning("%s (%s rejected for %s so far)", message, n, reason)

    def _announce(self, batch: Batch) -> None:
        """A status says how many batches of each kind its run published: the tracker learns
        what it should have received (:attr:`unreceived`)."""
        for e in batch.events:
            published = e.get("published") if isinstance(e, Mapping) else None
            if isinstance(published, dict):
                for kind, n in published.items():
                    if kind in self.kinds and type(n) is int:
                        self.tracker.announce(batch.host, batch.run, kind, n)

    @property
    def missed(self) -> int:
        """Batches lost in sequence holes (a queue-group member's holes are not counted: they
        went to other members; ``tracker.report()`` still shows them per host and kind)."""
        return self.tracker.missed() - self.shared_holes

    @property
    def unreceived(self) -> int:
        """Batches the agents' status said were published that were neither received nor
        counted as missed (the tail after the last batch of a run). While agents run, mostly
        batches still on the way; once the consumer has drained, lost."""
        return self.tracker.unreceived()
