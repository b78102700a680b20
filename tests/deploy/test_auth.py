"""netevents.auth's sans-IO core: permissions per role, the rendered authorization block, names."""

from __future__ import annotations

import re
import stat

import pytest

from netevents.auth import (
    Fleet,
    FleetUser,
    agent_permissions,
    bus_url_with_user,
    consumer_permissions,
    hash_password,
    host_token,
    render_authorization,
    user_name,
)
from netevents.errors import ConfigError, SubjectError


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching (``*`` one token, ``>`` the rest), as the server applies it."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def may_publish(perm, subject: str) -> bool:
    return (any(subject_matches(a, subject) for a in perm.publish_allow)
            and not any(subject_matches(d, subject) for d in perm.publish_deny))


def test_agent_may_publish_only_its_own_event_subjects():
    perm = agent_permissions("dc1", "web-1")
    for kind in ("drop", "gap", "ipstat", "netstat", "frame", "status"):
        assert may_publish(perm, f"netevents.v1.{kind}.dc1.web-1")
    for subject in ("netevents.v1.drop.dc1.web-2", "netevents.v1.drop.dc2.web-1",
                    "netevents.v1.control.dc1.web-1", "netevents.v1.control.dc1.web-2",
                    "netevents.v1.incident.dc1.web-1", "$JS.API.STREAM.CREATE.NETEVENTS_EVENTS",
                    "netevents.v1.drop.dc1.web-1.extra"):
        assert not may_publish(perm, subject), subject
    # its own control subject and its own inbox only (was "_INBOX.>": every user's replies)
    assert perm.subscribe_allow == ["netevents.v1.control.dc1.web-1", "_INBOX.agent.dc1.web-1.>"]
    assert perm.allow_responses
    for subject in ("$JS.ACK.NETEVENTS_EVENTS.archive-drop.1.2.3.4.5", "_INBOX.consumer.archive.x",
                    "$JS.API.CONSUMER.DELETE.NETEVENTS_EVENTS.archive-drop"):
        assert not may_publish(perm, subject), subject


def test_consumer_publishes_no_event_and_only_its_own_durables_api():
    perm = consumer_permissions("archive")
    assert not may_publish(perm, "netevents.v1.drop.dc1.web-1")
    assert not may_publish(perm, "netevents.v1.control.dc1.web-1")
    assert may_publish(perm, "$JS.API.CONSUMER.MSG.NEXT.NETEVENTS_EVENTS.archive-drop")
    assert may_publish(perm, "$JS.ACK.NETEVENTS_STATS.archive-netstat.1.2.3.4.5")
    assert may_publish(perm, "$JS.API.CONSUMER.CREATE.NETEVENTS_EVENTS.archive-drop.netevents.v1.drop.>")
    assert not may_publish(perm, "$JS.API.STREAM.DELETE.NETEVENTS_EVENTS")
    assert not may_publish(perm, "$JS.API.STREAM.UPDATE.NETEVENTS_EVENTS")
    assert not may_publish(perm, "$JS.API.STREAM.CREATE.OTHER")
    # another's durables, unnamed consumers and consumer listing are not its own
    for subject in ("$JS.API.CONSUMER.DELETE.NETEVENTS_EVENTS.other-drop",
                    "$JS.API.CONSUMER.CREATE.NETEVENTS_EVENTS.other-drop",
                    "$JS.API.CONSUMER.CREATE.NETEVENTS_EVENTS",
                    "$JS.API.CONSUMER.DURABLE.CREATE.NETEVENTS_EVENTS.other-drop",
                    "$JS.API.CONSUMER.MSG.NEXT.NETEVENTS_EVENTS.other-drop",
                    "$JS.API.CONSUMER.LIST.NETEVENTS_EVENTS",
                    "$JS.ACK.NETEVENTS_EVENTS.other-drop.1.2.3.4.5"):
        assert not may_publish(perm, subject), subject
    assert perm.subscribe_allow == ["netevents.v1.>", "_INBOX.consumer.archive.>"]
    two = consumer_permissions("archive", ["arch-a", "arch-b"])
    assert may_publish(two, "$JS.API.CONSUMER.INFO.NETEVENTS_FRAMES.arch-b-frame")
    assert not may_publish(two, "$JS.API.CONSUMER.INFO.NETEVENTS_FRAMES.archive-frame")
    with pytest.raises(SubjectError):
        consumer_permissions("archive", ["a.b"])


def test_names_cannot_inject_subject_tokens():
    for bad in ("web.1", "web-*", ">", "", "a b"):
        with pytest.raises(SubjectError):
            agent_permissions("dc1", bad)
    assert user_name("agent", "web-1", "dc1") == "agent.dc1.web-1"
    assert user_name("consumer", "archive") == "consumer.archive"


def test_host_token_matches_the_documented_rule():
    assert host_token("web-1") == "web-1"
    assert host_token("ip-10-0-0-1.ec2.internal") == "ip-10-0-0-1-ec2-internal"
    assert host_token("nöde.1") == "n-de-1"
    with pytest.raises(ConfigError):
        host_token("...")


def test_rendered_block_holds_every_user_with_its_permissions():
    users = [FleetUser("agent.dc1.web-1", "agent", "$2b$10$abc", "dc1", "web-1"),
             FleetUser("consumer.archive", "consumer", "pw")]
    text = render_authorization(users)
    assert text.count("user: ") == 2
    assert '"$2b$10$abc"' in text  # quoted: nats-server would read $2b as a variable otherwise
    block = text[text.index('user: "agent.dc1.web-1"'):text.index('user: "consumer.archive"')]
    assert '"netevents.v1.*.dc1.web-1"' in block and "allow_responses: true" in block
    with pytest.raises(ConfigError, match="twice"):
        render_authorization(users + users[:1])
    with pytest.raises(ConfigError, match="unknown role"):
        render_authorization([FleetUser("x.y", "root", "pw")])


def _bcrypt_here() -> bool:
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        return crypt.crypt("x", "$2b$04$abcdefghijklmnopqrstuu").startswith("$2b$")
    except (ImportError, OSError, ValueError, AttributeError):
        return False


def test_password_hash_is_bcrypt_where_the_library_has_it():
    h = hash_password("secret")
    if _bcrypt_here():  # no plaintext fallback where bcrypt works
        assert re.match(r"\$2[aby]\$\d\d\$", h), h
    else:
        assert h == "secret"


def test_password_hash_falls_back_to_plain_only_without_bcrypt(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_crypt(name, *args, **kwargs):
        if name == "crypt":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_crypt)
    assert hash_password("secret") == "secret"


def test_bus_url_with_user():
    assert bus_url_with_user("nats://nats.example:4222", "agent.dc1.web-1", "pw") == \
        "nats://agent.dc1.web-1:pw@nats.example:4222"
    assert bus_url_with_user("tls://n", "u", "p") == "tls://u:p@n"
    with pytest.raises(ConfigError):
        bus_url_with_user("nats-example", "u", "p")


def test_fleet_files_are_private_and_a_user_is_added_once(tmp_path):
    fleet = Fleet(tmp_path / "f")
    user, env = fleet.add("agent", "web-1", "nats://n:4222", site="dc1", host="web-1")
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "f" / "fleet.json").stat().st_mode) == 0o600
    password = re.search(r"web-1:([^@]+)@", env.read_text()).group(1)
    assert password not in (tmp_path / "f" / "fleet.json").read_text() or user.password == password
    with pytest.raises(ConfigError, match="exists"):
        Fleet(tmp_path / "f").add("agent", "web-1", "nats://n:4222", site="dc1", host="web-1")
    again = Fleet(tmp_path / "f")
    again.add("agent", "web-1", "nats://n:4222", site="dc1", host="web-1", rotate=True)
    assert password not in env.read_text()
    again.remove("agent.dc1.web-1")
    assert not env.exists() and "web-1" not in (tmp_path / "f" / "auth.conf").read_text()


def test_leaf_user_may_carry_replies_but_still_no_other_hosts_events():
    from netevents.auth import leaf_permissions

    perm = leaf_permissions("dc1", "web-1")
    assert may_publish(perm, "_INBOX.operator.ops.abc.def")  # control replies to operators
    assert not may_publish(perm, "_INBOX.consumer.archive.abc")
    assert not may_publish(perm, "$JS.ACK.NETEVENTS_EVENTS.archive-drop.1.2.3.4.5")
    assert may_publish(perm, "netevents.v1.drop.dc1.web-1")
    assert not may_publish(perm, "netevents.v1.drop.dc1.web-2")
    assert not may_publish(perm, "netevents.v1.control.dc1.web-2")


def test_redact_url_hides_the_password_only():
    from netevents.bus import redact_url

    assert redact_url("nats://agent.dc1.web-1:s3cret@nats:4222") == "nats://agent.dc1.web-1:***@nats:4222"
    assert redact_url("nats://nats:4222") == "nats://nats:4222"


def test_auth_command_line(tmp_path):
    import subprocess
    import sys

    cli = [sys.executable, "-m", "netevents.app", "auth"]
    fleet = ["--fleet", str(tmp_path / "f")]
    bad = subprocess.run([*cli, "add-host", "web-1.example.com", *fleet], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid host 'web-1.example.com'" in bad.stderr
    ok = subprocess.run([*cli, "add-host", "web-1.example.com", "--token", "--site", "dc1", "--leaf",
                         *fleet], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    listed = subprocess.run([*cli, "list", *fleet], capture_output=True, text=True).stdout
    assert "agent.dc1.web-1-example-com\tagent" in listed and "leaf.dc1.web-1-example-com\tleaf" in listed


def test_url_credentials_become_connect_options_for_every_server():
    from netevents.bus import split_url_credentials

    url, opts = split_url_credentials("nats://agent.dc1.web-1:p%40ss@nats-1:4222")
    assert url == "nats://nats-1:4222"
    assert opts == {"user": "agent.dc1.web-1", "password": "p@ss"}
    assert split_url_credentials("nats://nats:4222") == ("nats://nats:4222", {})


def test_sourcing_a_hosts_credentials_file_is_enough_to_start_its_agent(tmp_path, monkeypatch):
    from netevents.app.cli import build_parser
    from netevents.app.options import agent_config

    fleet = Fleet(tmp_path / "f")
    ops_env = fleet.add("operator", "ops", "nats://n:4222")[1]
    env = fleet.add("agent", "web-1", "nats://n:4222", site="dc1", host="web-1")[1]
    values = dict(ln.split("=", 1) for ln in env.read_text().splitlines())
    assert set(values) == {"NETEVENTS_BUS", "NETEVENTS_SITE", "NETEVENTS_HOST", "NETEVENTS_OPERATOR_KEYS"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    cfg = agent_config(build_parser().parse_args(["agent"]))
    assert (cfg.host, cfg.site, cfg.bus) == ("web-1", "dc1", values["NETEVENTS_BUS"])
    assert cfg.operator_keys == values["NETEVENTS_OPERATOR_KEYS"]
    assert fleet.users["operator.ops"].key in cfg.operator_keys
    assert "NETEVENTS_OPERATOR_KEY=ed25519:" in ops_env.read_text()
    # the command line still wins
    cfg = agent_config(build_parser().parse_args(["agent", "--host", "web-9", "--site", "dc2"]))
    assert (cfg.host, cfg.site) == ("web-9", "dc2")
