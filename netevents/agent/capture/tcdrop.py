"""Capture-only mode for a mirror/SPAN port: drop every frame at ingress, after the taps.

``__netif_receive_skb_core`` hands a frame to the packet taps (``ptype_all``: our AF_PACKET
rings) before ``sch_handle_ingress`` runs the clsact ingress filters, so a drop there still
lets the capture see every frame while the host's stack spends nothing else on it (mgcap's
"drop mode"). The agent installs a clsact qdisc (only if there is none) and one ``matchall``
filter with ``action drop`` (``u32 match u32 0 0`` where cls_matchall is missing) at a
preference of its own, and removes exactly what it installed on exit.

Kernels built without the gact action (``CONFIG_NET_ACT_GACT``: "Failed to load TC action
module") get the same effect from an nftables netdev ``ingress`` chain with ``policy drop``
(``nf_ingress`` also runs after the taps, right after ``sch_handle_ingress``), in a table of
the agent's own that it deletes on exit.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from netevents.errors import CapabilityError

log = logging.getLogger("netevents.agent.capture")

PREF = 49_007  # our filter's preference: removal touches nothing else


class IngressDrop:
    """Install with :meth:`install` (or ``with``), remove with :meth:`remove`."""

    def __init__(self, iface: str, netns: str | None = None) -> None:
        self.iface = iface
        self.netns = netns
        self.made_qdisc = False
        self.installed = False
        self.mechanism: str | None = None
        self.nft_table: str | None = None

    def _tc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        tc = shutil.which("tc")
        if tc is None:
            raise CapabilityError("capture", "capture-only mode needs iproute2's tc")
        cmd = [tc, *(["-n", self.netns] if self.netns else []), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        if check and proc.returncode != 0:
            raise CapabilityError("capture", f"capture-only: `tc {' '.join(cmd[1:])}`: "
                                             f"{proc.stderr.strip() or 'failed'}")
        return proc

    def _nft(self, script: str, check: bool = True) -> subprocess.CompletedProcess:
        nft = shutil.which("nft")
        if nft is None:
            raise CapabilityError("capture", "nftables' nft is missing")
        cmd = [*(["ip", "netns", "exec", self.netns] if self.netns else []), nft, "-f", "-"]
        proc = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=10)
        if check and proc.returncode != 0:
            raise CapabilityError("capture", f"nft: {proc.stderr.strip() or 'failed'}")
        return proc

    def install(self) -> None:
        """Raises CapabilityError (no tc/nft, no CAP_NET_ADMIN, no clsact) naming the command."""
        show = self._tc("qdisc", "show", "dev", self.iface)
        if "clsact" not in show.stdout:
            self._tc("qdisc", "add", "dev", self.iface, "clsact")
            self.made_qdisc = True
        base = ("filter", "add", "dev", self.iface, "ingress", "pref", str(PREF), "protocol", "all")
        tc_error = "failed"
        for classifier, spec in (("tc matchall", ("matchall",)),
                                 ("tc u32", ("u32", "match", "u32", "0", "0"))):
            proc = self._tc(*base, *spec, "action", "drop", check=False)
            if proc.returncode == 0:
                self.mechanism = classifier
                self.installed = True
                break
            tc_error = (proc.stderr.strip().splitlines() or ["failed"])[0]
        else:
            if self.made_qdisc:
                self._tc("qdisc", "del", "dev", self.iface, "clsact", check=False)
                self.made_qdisc = False
            table = "netevents_capture_" + "".join(c if c.isalnum() else "_" for c in self.iface)
            try:
                self._nft(f"table netdev {table} {{\n"
                          f"  chain ingress {{ type filter hook ingress device \"{self.iface}\" "
                          f"priority 0; policy drop; }}\n}}\n")
            except CapabilityError as exc:
                raise CapabilityError("capture", f"capture-only: tc ingress drop failed "
                                                 f"({tc_error}) and {exc}") from None
            self.nft_table = table
            self.mechanism = "nft netdev ingress"
            self.installed = True
        log.info("%s: capture-only: %s drop installed", self.iface, self.mechanism)

    def remove(self) -> None:
        """Remove what install() added; never raises (logs what it could not remove)."""
        try:
            if self.installed and self.nft_table:
                self._nft(f"delete table netdev {self.nft_table}\n", check=False)
                self.nft_table = None
            elif self.installed:
                self._tc("filter", "del", "dev", self.iface, "ingress", "pref", str(PREF),
                         check=False)
            self.installed = False
            if self.made_qdisc:
                self._tc("qdisc", "del", "dev", self.iface, "clsact", check=False)
                self.made_qdisc = False
        except (CapabilityError, OSError, subprocess.SubprocessError) as exc:
            log.warning("%s: could not remove the capture-only drop: %s", self.iface, exc)

    def __enter__(self) -> IngressDrop:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
