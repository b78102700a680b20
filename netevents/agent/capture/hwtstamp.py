"""Hardware timestamping: SIOCSHWTSTAMP / SIOCGHWTSTAMP and ETHTOOL_GET_TS_INFO.

What ``mgcap_hwtstamp_config`` did, plus reading back what the driver really applied (drivers
may widen the requested rx filter, e.g. PTP_V2_EVENT -> ALL, or refuse it) and the PHC index.

    netevents hwtstamp IFACE on|off|show       (see :func:`main`)

Layouts from include/uapi/linux/net_tstamp.h, include/uapi/linux/ethtool.h,
include/uapi/linux/sockios.h and include/uapi/linux/if.h.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import os
import socket
import struct
import sys
from dataclasses import dataclass

from netevents.errors import CapabilityError

from ..kernel.netns import entered

# include/uapi/linux/sockios.h
SIOCETHTOOL = 0x8946
SIOCSHWTSTAMP = 0x89B0
SIOCGHWTSTAMP = 0x89B1
# include/uapi/linux/ethtool.h
ETHTOOL_GET_TS_INFO = 0x00000041
# struct ethtool_ts_info { __u32 cmd, so_timestamping; __s32 phc_index; __u32 tx_types,
#   tx_reserved[3], rx_filters, rx_reserved[3]; }
ETHTOOL_TS_INFO = struct.Struct("=IIiI12xI12x")
# struct hwtstamp_config { int flags; int tx_type; int rx_filter; }
HWTSTAMP_CONFIG = struct.Struct("=iii")
# struct ifreq: char ifr_name[IFNAMSIZ=16]; union { ...; void __user *ifr_data; } (40 bytes)
IFNAMSIZ = 16
IFREQ = struct.Struct("@16sP16x")

HWTSTAMP_TX_OFF, HWTSTAMP_TX_ON = 0, 1
HWTSTAMP_FILTER_NONE, HWTSTAMP_FILTER_ALL = 0, 1
RX_FILTERS = ("none", "all", "some", "ptp_v1_l4_event", "ptp_v1_l4_sync", "ptp_v1_l4_delay_req",
              "ptp_v2_l4_event", "ptp_v2_l4_sync", "ptp_v2_l4_delay_req", "ptp_v2_l2_event",
              "ptp_v2_l2_sync", "ptp_v2_l2_delay_req", "ptp_v2_event", "ptp_v2_sync",
              "ptp_v2_delay_req", "ntp_all")
TX_TYPES = ("off", "on", "onestep_sync", "onestep_p2p")
SOF_NAMES = ("tx_hardware", "tx_software", "rx_hardware", "rx_software", "software",
             "sys_hardware", "raw_hardware")


def _names(mask: int, names: tuple[str, ...]) -> list[str]:
    return [n for i, n in enumerate(names) if mask & (1 << i)]


@dataclass(slots=True)
class TsInfo:
    iface: str
    so_timestamping: list[str]
    phc_index: int
    tx_types: list[str]
    rx_filters: list[str]

    @property
    def hardware(self) -> bool:
        return "raw_hardware" in self.so_timestamping and self.phc_index >= 0


@dataclass(slots=True)
class HwConfig:
    tx_type: str
    rx_filter: str


def _ioctl(iface: str, request: int, payload: bytes, netns: str | None) -> bytes:
    if len(iface.encode()) >= IFNAMSIZ:
        raise CapabilityError("hwtstamp", f"interface name {iface!r} is too long")
    buf = ctypes.create_string_buffer(payload, len(payload))
    ifr = IFREQ.pack(iface.encode(), ctypes.addressof(buf))
    with entered(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(sock.fileno(), request, ifr)
    except OSError as exc:
        what = {SIOCSHWTSTAMP: "SIOCSHWTSTAMP", SIOCGHWTSTAMP: "SIOCGHWTSTAMP",
                SIOCETHTOOL: "ETHTOOL_GET_TS_INFO"}[request]
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY):
            why = "the driver has no hardware timestamping"
        elif exc.errno == errno.ENODEV:
            why = "no such interface"
        elif exc.errno == errno.EPERM:
            why = "needs CAP_NET_ADMIN"
        else:
            why = os.strerror(exc.errno or 0)
        raise CapabilityError("hwtstamp", f"{iface}: {what}: {why}") from None
    finally:
        sock.close()
    return buf.raw


def ts_info(iface: str, netns: str | None = None) -> TsInfo:
    """ETHTOOL_GET_TS_INFO. Raises CapabilityError if the interface or ethtool call fails."""
    raw = _ioctl(iface, SIOCETHTOOL, ETHTOOL_TS_INFO.pack(ETHTOOL_GET_TS_INFO, 0, -1, 0, 0),
                 netns)
    _cmd, sof, phc, tx, rx = ETHTOOL_TS_INFO.unpack(raw)
    return TsInfo(iface, _names(sof, SOF_NAMES), phc, _names(tx, TX_TYPES), _names(rx, RX_FILTERS))


def get_config(iface: str, netns: str | None = None) -> HwConfig:
    """SIOCGHWTSTAMP. Raises CapabilityError where the driver has no hardware stamping."""
    _f, tx, rx = HWTSTAMP_CONFIG.unpack(_ioctl(iface, SIOCGHWTSTAMP, HWTSTAMP_CONFIG.pack(0, 0, 0),
                                               netns))
    return _config(tx, rx)


def set_config(iface: str, on: bool, netns: str | None = None) -> HwConfig:
    """SIOCSHWTSTAMP; returns what the driver actually applied (it writes the config back).

    Raises:
        CapabilityError: the driver cannot (veth, most virtual devices) or no CAP_NET_ADMIN.
    """
    req = HWTSTAMP_CONFIG.pack(0, HWTSTAMP_TX_ON if on else HWTSTAMP_TX_OFF,
                               HWTSTAMP_FILTER_ALL if on else HWTSTAMP_FILTER_NONE)
    _f, tx, rx = HWTSTAMP_CONFIG.unpack(_ioctl(iface, SIOCSHWTSTAMP, req, netns))
    return _config(tx, rx)


def _config(tx: int, rx: int) -> HwConfig:
    return HwConfig(TX_TYPES[tx] if 0 <= tx < len(TX_TYPES) else str(tx),
                    RX_FILTERS[rx] if 0 <= rx < len(RX_FILTERS) else str(rx))


def enable_for_capture(iface: str, netns: str | None = None) -> tuple[dict, str | None]:
    """Turn on receive hardware stamps for a capture, keeping a filter already set (a PTP
    daemon's); returns (the ``hwtstamp`` batch field, one line to log or None)."""
    field: dict = {"filter": None, "phc_index": None}
    try:
        info = ts_info(iface, netns)
        field["phc_index"] = info.phc_index if info.phc_index >= 0 else None
    except CapabilityError as exc:
        return field, f"{exc}; capturing with software timestamps"
    try:
        current = get_config(iface, netns)
        if current.rx_filter != "none":
            field["filter"] = current.rx_filter
            return field, None
        field["filter"] = set_config(iface, True, netns).rx_filter
        return field, None
    except CapabilityError as exc:
        return field, (f"{iface}: no hardware timestamps ({str(exc).split(': ', 2)[-1]}); "
                       f"capturing with software timestamps")


def main(argv: list[str] | None = None) -> int:
    """``netevents hwtstamp IFACE on|off|show``: 0 ok (``show`` of an interface without hardware
    stamps says so and is ok), 1 the interface can't (on/off) or does not exist, 2 usage."""
    ap = argparse.ArgumentParser(prog="netevents hwtstamp",
                                 description="show or set hardware timestamping of an interface")
    ap.add_argument("iface")
    ap.add_argument("action", choices=("on", "off", "show"))
    ap.add_argument("--netns", help="named network namespace the interface is in")
    args = ap.parse_args(argv)
    try:
        info = ts_info(args.iface, args.netns)
    except CapabilityError as exc:
        print(f"netevents hwtstamp: {exc}", file=sys.stderr)
        return 1
    try:
        if args.action == "show":
            cfg = get_config(args.iface, args.netns)
        else:
            cfg = set_config(args.iface, args.action == "on", args.netns)
    except CapabilityError as exc:
        if args.action == "show":
            # Showing worked: what there is to show is that the driver has no hardware stamps.
            print(f"{args.iface}: no hardware timestamping ({str(exc).split(': ', 1)[-1]}); "
                  f"phc_index {info.phc_index}")
            print(f"  capabilities: {', '.join(info.so_timestamping) or 'none'}")
            return 0
        print(f"netevents hwtstamp: {exc}", file=sys.stderr)
        print(f"  {args.iface}: timestamping {', '.join(info.so_timestamping) or 'none'}; "
              f"phc_index {info.phc_index}", file=sys.stderr)
        return 1
    print(f"{args.iface}: tx_type {cfg.tx_type}, rx_filter {cfg.rx_filter}, "
          f"phc_index {info.phc_index}")
    print(f"  capabilities: {', '.join(info.so_timestamping) or 'none'}; "
          f"tx types: {', '.join(info.tx_types) or 'none'}; "
          f"rx filters: {', '.join(info.rx_filters) or 'none'}")
    return 0


__all__ = ["HwConfig", "TsInfo", "enable_for_capture", "get_config", "main", "set_config",
           "ts_info"]


if __name__ == "__main__":
    sys.exit(main())
