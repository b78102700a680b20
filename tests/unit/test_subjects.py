import pytest

from netevents.errors import SubjectError
from netevents.subjects import (
    control_subject,
    default_host,
    event_subject,
    filter_subject,
    host_matches,
    parse_subject,
)


def test_event_and_control_subjects():
    assert event_subject("drop", "dc1", "web-1") == "netevents.v1.drop.dc1.web-1"
    assert control_subject("dc1", "web_1") == "netevents.v1.control.dc1.web_1"
    assert parse_subject("netevents.v1.drop.dc1.web-1") == ("drop", "dc1", "web-1")


@pytest.mark.parametrize("host", ["a.b", "*", ">", "a b", "", "x" * 129, "é", None, 5])
def test_tokens_that_would_break_a_subject_are_refused(host):
    with pytest.raises(SubjectError, match="invalid host"):
        event_subject("drop", "dc1", host)


def test_filters_and_globs():
    assert filter_subject("drop") == "netevents.v1.drop.*.*"
    assert filter_subject("drop", "dc1", "web-*") == "netevents.v1.drop.dc1.*"
    assert host_matches("web-3", ["web-*"]) and not host_matches("db-1", ["web-*"])
    assert host_matches("anything", None)
    with pytest.raises(SubjectError):
        parse_subject("netevents.v1.drop.dc1")


def test_default_host_is_always_a_valid_token(monkeypatch):
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "node 7.example.com")
    assert default_host() == "node-7"
