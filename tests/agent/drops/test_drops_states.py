"""A drop source is "starting" in status until it says it is attached, never a false "running"."""

from __future__ import annotations

import asyncio

from netevents.agent.drops import DropsCollector
from netevents.errors import CapabilityError


class _Sink:
    def __init__(self) -> None:
        self.sources: dict[str, dict] = {}

    def state(self, source, state, reason=""):
        self.sources[source] = {"state": state, **({"reason": reason} if reason else {})}


class _Slow:
    """Loads for a while (like the eBPF object on a busy host), then attaches or fails."""

    def __init__(self, name: str, fail: bool) -> None:
        self.name, self.fail = name, fail
        self.ready = asyncio.Event()
        self.go = asyncio.Event()

    async def run(self, sink) -> None:
        await self.go.wait()
        if self.fail:
            raise CapabilityError(self.name, "needs CAP_BPF")
        self.ready.set()
        await asyncio.sleep(3600)


def test_a_source_is_starting_until_ready_and_a_failed_one_never_ran():
    async def main():
        first, second = _Slow("drops.ebpf", fail=True), _Slow("drops.tracepoint", fail=False)
        sink = _Sink()
        task = asyncio.create_task(DropsCollector([first, second], None)._events(sink))
        await asyncio.sleep(0.05)
        assert sink.sources == {"drops.ebpf": {"state": "starting"}}
        first.go.set()
        await asyncio.sleep(0.05)
        assert sink.sources["drops.ebpf"]["state"] == "unavailable"
        assert "CAP_BPF" in sink.sources["drops.ebpf"]["reason"]
        assert sink.sources["drops.tracepoint"] == {"state": "starting"}
        second.go.set()
        await asyncio.sleep(0.05)
        assert sink.sources["drops.tracepoint"] == {"state": "running"}
        assert sink.sources["drops.ebpf"]["state"] == "unavailable"  # never flipped to running
        task.cancel()

    asyncio.run(main())
