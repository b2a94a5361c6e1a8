"""The demo's parsers, over the real lines of the four Loghub samples."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from zlog.demo.parsers import SOURCES, parse_line

DATA_DIR = Path(__file__).parents[2] / "examples" / "data" / "loghub"


def read_lines(source_file: str) -> list[str]:
    return (DATA_DIR / source_file).read_text().splitlines()


def line_event(source_file: str, line_no: int):
    return parse_line(source_file, line_no, read_lines(source_file)[line_no - 1])


@pytest.mark.parametrize("source_file", list(SOURCES))
def test_every_line_of_every_sample_parses(source_file: str) -> None:
    """No line of the shipped samples falls back to the unparsed event."""
    lines = read_lines(source_file)
    events = [parse_line(source_file, n, text) for n, text in enumerate(lines, 1)]

    assert len(events) == 2000
    assert [e for e in events if e.fields.get("parsed") is False] == []
    assert [e.fields["line_no"] for e in events] == list(range(1, 2001))
    assert {e.fields["source_file"] for e in events} == {source_file}


@pytest.mark.parametrize("source_file", list(SOURCES))
def test_every_event_has_the_keys_of_its_class(source_file: str) -> None:
    """Each class carries the keys its envelope payload needs."""
    required = {
        "application": {"logger"},
        "audit": {"action", "actor", "resource", "outcome"},
        "security": {"event_type", "user_id", "resource", "decision"},
    }
    for line_no, text in enumerate(read_lines(source_file), 1):
        event = parse_line(source_file, line_no, text)

        assert required[event.event_class] <= event.fields.keys(), text
        assert event.message
        assert event.method in {"info", "warning", "error"}
        assert event.fields.get("decision") in {None, "allow", "deny"}
        assert event.fields.get("outcome") in {None, "success", "failure"}


def test_failed_password_is_a_denied_login_with_the_remote_address() -> None:
    event = line_event("OpenSSH_2k.log", 30)

    assert event.event_class == "security"
    assert event.method == "warning"
    assert event.fields["event_type"] == "login.failed"
    assert event.fields["decision"] == "deny"
    assert event.fields["user_id"] == "root"
    assert event.fields["remote_addr"] == "192.0.2.105"
    assert event.fields["remote_port"] == 42393
    assert event.fields["repeated"] == 5


@pytest.mark.parametrize(
    ("line_no", "user", "remote_addr"),
    [
        pytest.param(2, "webmaster", "192.0.2.101", id="invalid-user-from"),
        pytest.param(3, "webmaster", None, id="input-userauth-request"),
    ],
)
def test_invalid_user_is_denied(line_no: int, user: str, remote_addr) -> None:
    event = line_event("OpenSSH_2k.log", line_no)

    assert event.fields["event_type"] == "login.invalid_user"
    assert event.fields["decision"] == "deny"
    assert event.fields["user_id"] == user
    assert event.fields.get("remote_addr") == remote_addr


def test_break_in_warning_is_denied_with_address_and_host_name() -> None:
    event = line_event("OpenSSH_2k.log", 1)

    assert event.fields["event_type"] == "login.break_in_attempt"
    assert event.fields["decision"] == "deny"
    assert event.fields["remote_addr"] == "192.0.2.101"
    assert event.fields["remote_host"] == "host-27.example.net"


def test_accepted_login_is_allowed() -> None:
    event = line_event("OpenSSH_2k.log", 956)

    assert event.event_class == "security"
    assert event.method == "info"
    assert event.fields["event_type"] == "login.accepted"
    assert event.fields["decision"] == "allow"
    assert event.fields["user_id"] == "fztu"
    assert event.fields["remote_addr"] == "192.0.2.124"


@pytest.mark.parametrize(
    ("line_no", "user", "remote_addr"),
    [
        pytest.param(1, "unknown", "192.0.2.33", id="address"),
        pytest.param(4, "root", "host-1.example.net", id="host-name-and-user"),
    ],
)
def test_pam_authentication_failure_is_denied(
    line_no: int, user: str, remote_addr: str
) -> None:
    event = line_event("Linux_2k.log", line_no)

    assert event.fields["event_type"] == "login.auth_failure"
    assert event.fields["decision"] == "deny"
    assert event.fields["user_id"] == user
    assert event.fields["remote_addr"] == remote_addr
    assert event.fields["program"] == "sshd"


@pytest.mark.parametrize(
    ("line_no", "action", "actor", "resource", "outcome"),
    [
        pytest.param(14, "session.open", "cyrus", "su", "success", id="su-open"),
        pytest.param(15, "session.close", "cyrus", "su", "success", id="su-close"),
        pytest.param(16, "cron.job", "cron", "logrotate", "failure", id="cron"),
        pytest.param(144, "service.stop", "init", "cupsd", "success", id="stop"),
        pytest.param(146, "service.restart", "init", "syslogd", "success", id="rst"),
        pytest.param(1972, "service.start", "init", "pcmcia", "success", id="rc"),
    ],
)
def test_audit_lines_name_actor_action_resource_outcome(
    line_no: int, action: str, actor: str, resource: str, outcome: str
) -> None:
    event = line_event("Linux_2k.log", line_no)

    assert event.event_class == "audit"
    assert (
        event.fields["action"],
        event.fields["actor"],
        event.fields["resource"],
        event.fields["outcome"],
    ) == (action, actor, resource, outcome)


def test_su_session_keeps_who_opened_it() -> None:
    assert line_event("Linux_2k.log", 14).fields["opened_by"] == "uid=0"


def test_other_syslog_lines_are_application_events_of_their_program() -> None:
    event = line_event("Linux_2k.log", 1910)

    assert event.event_class == "application"
    assert event.fields["logger"] == "kernel"
    assert event.message == "klogd 1.4.1, log source = /proc/kmsg started."


def test_apache_line_keeps_level_and_client() -> None:
    error = line_event("Apache_2k.log", 2)
    forbidden = next(
        parse_line("Apache_2k.log", n, text)
        for n, text in enumerate(read_lines("Apache_2k.log"), 1)
        if "[client " in text
    )

    assert error.event_class == "application"
    assert error.method == "error"
    assert error.message == "mod_jk child workerEnv in error state 6"
    assert error.fields["logger"] == "httpd"
    assert forbidden.fields["client_addr"] == "192.0.2.1"
    assert forbidden.message.startswith("Directory index forbidden")


def test_hdfs_line_keeps_level_logger_and_thread() -> None:
    event = line_event("HDFS_2k.log", 1)
    warnings = [
        parse_line("HDFS_2k.log", n, text)
        for n, text in enumerate(read_lines("HDFS_2k.log"), 1)
        if " WARN " in text
    ]

    assert event.fields["logger"] == "dfs.DataNode$PacketResponder"
    assert event.fields["thread"] == 148
    assert event.message.startswith("PacketResponder 1 for block")
    assert len(warnings) == 80
    assert {e.method for e in warnings} == {"warning"}


def test_samples_split_into_the_expected_classes() -> None:
    """The class counts over all 8,000 lines, pinned so a rule change shows."""
    counts = Counter(
        parse_line(name, n, text).event_class
        for name in SOURCES
        for n, text in enumerate(read_lines(name), 1)
    )

    assert counts == {"application": 5546, "security": 2135, "audit": 319}


def test_unrecognised_line_is_kept_as_an_unparsed_application_event() -> None:
    event = parse_line("HDFS_2k.log", 7, "garbage that is not HDFS\n")

    assert event.event_class == "application"
    assert event.message == "garbage that is not HDFS"
    assert event.fields["parsed"] is False
    assert event.fields["line_no"] == 7
