"""What root loads is what we built (netevents/agent/loadcheck.py): the C walker and the eBPF object are
loaded only from a directory nobody else can write, and only when their recorded hash matches."""

from __future__ import annotations

import os
import shutil

import pytest

from netevents.agent.loadcheck import hash_matches, record_hash, untrusted


def test_a_private_directory_is_trusted_and_a_writable_one_is_not(tmp_path):
    d = tmp_path / "cache"
    d.mkdir(mode=0o755)
    f = d / "obj"
    f.write_bytes(b"x")
    f.chmod(0o644)
    assert untrusted(f) is None
    d.chmod(0o777)
    assert "writable by others" in untrusted(f)
    d.chmod(0o755)
    f.chmod(0o666)
    assert "writable by others" in untrusted(f)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file away")
def test_a_file_owned_by_someone_else_is_not_trusted(tmp_path):
    f = tmp_path / "obj"
    f.write_bytes(b"x")
    os.chown(f, 65534, 65534)
    assert "owned by uid 65534" in untrusted(f)


def test_the_recorded_hash_must_match(tmp_path):
    built = tmp_path / "obj.tmp"
    built.write_bytes(b"what we built")
    final = tmp_path / "obj"
    record_hash(built, final)
    built.replace(final)
    assert hash_matches(final)
    final.write_bytes(b"what someone put there")
    assert not hash_matches(final)


@pytest.mark.skipif(not any(map(shutil.which, ("cc", "gcc", "clang"))), reason="needs a C compiler")
def test_the_c_walker_is_rebuilt_when_tampered_with_and_refused_from_an_open_cache(tmp_path):
    from netevents.agent.capture import cwalk

    cache = tmp_path / "capture"
    lib = cwalk.build(cache)
    assert hash_matches(lib)
    lib.write_bytes(b"not what we built")
    again = cwalk.build(cache)
    assert again == lib and hash_matches(lib) and lib.read_bytes()[:4] == b"\x7fELF"
    cache.chmod(0o777)
    with pytest.raises(cwalk.BuildError, match="writable by others"):
        cwalk.build(cache)
    cache.chmod(0o755)
