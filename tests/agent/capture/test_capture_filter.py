"""BPF filters: `tcpdump -ddd` output (golden), compiling an expression with tcpdump, errors."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from netevents.agent.capture.ring import attach_filter, compile_filter, parse_bpf_ddd
from netevents.errors import ConfigError

UDP_9999 = (Path(__file__).parent / "testcases" / "udp_dst_port_9999.ddd").read_text()
"""`tcpdump -ddd -y EN10MB 'udp dst port 9999'` (tcpdump 4.99.3): the tests use this program so
they do not need tcpdump."""


def test_ddd_output_parses_and_attaches():
    prog = parse_bpf_ddd(UDP_9999)
    assert len(prog) == 16 and prog[0] == (40, 0, 0, 12) and prog[-1] == (6, 0, 0, 0)
    assert compile_filter(UDP_9999) == prog  # -ddd text is accepted where an expression is
    if hasattr(socket, "AF_PACKET"):
        try:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            pytest.skip("needs CAP_NET_RAW")
        with s:
            attach_filter(s, prog)  # the kernel's checker accepts it


@pytest.mark.parametrize("text", ["", "three\n1 2 3 4", "2\n6 0 0 0", "1\n6 0 0"])
def test_bad_ddd_is_one_clear_error(text):
    with pytest.raises(ConfigError, match="capture filter"):
        parse_bpf_ddd(text)


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump to compile expressions")
def test_expression_compiled_by_tcpdump_matches_the_golden_program():
    assert compile_filter("udp dst port 9999") == parse_bpf_ddd(UDP_9999)
    with pytest.raises(ConfigError, match="capture filter 'udp dst port nine'"):
        compile_filter("udp dst port nine")
