"""Turn one line of a Loghub sample into one zlog event.

Pure code: a line of text in, a ``LineEvent`` out; no files, no clock and no
zlog imports, so every rule is tested on real lines without a broker.

Each source has one small parser. The two syslog sources (OpenSSH and Linux)
share a header parser and then try a table of rules on the message, first
match wins:

- security rules: failed, invalid and accepted logins, break-in warnings,
  PAM authentication failures; ``decision`` is ``deny`` or ``allow`` and the
  remote address is kept when the line has one;
- audit rules: sessions opened and closed (su, sshd, login), the cron job
  that runs logrotate, services started and stopped;
- everything else is an application event logged by the program that wrote
  the line.

Apache and HDFS lines are application events with the level and logger they
were written with. A line no parser recognises still becomes an application
event, marked ``parsed=False``, so a replay never loses a line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "SOURCES",
    "LineEvent",
    "parse_line",
]

# The structlog method each source level is logged with.
_LEVEL_METHODS = {
    "notice": "info",
    "error": "error",
    "INFO": "info",
    "WARN": "warning",
}


@dataclass(frozen=True)
class LineEvent:
    """One parsed line: the structlog method, the message and the event keys.

    ``fields`` always holds ``event_class``, ``source_file`` and ``line_no``,
    then the keys of that class (see ``zlog.demo`` and COMPAT.md).
    """

    method: str
    message: str
    fields: dict[str, object]

    @property
    def event_class(self) -> str:
        return str(self.fields["event_class"])


# -- syslog (OpenSSH, Linux) ---------------------------------------------------

_SYSLOG_HEADER = re.compile(
    r"(?P<source_time>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (?P<host>\S+) +"
    r"(?P<tag>[^:]*?): ?(?P<text>.*)\Z"
)
# "sshd[24200]", "su(pam_unix)[21416]", "syslogd 1.4.1", "-- root[2421]"
_SYSLOG_TAG = re.compile(
    r"(?:-- )?(?P<program>[^\[(\s]+)(?:\((?P<facility>[^)]*)\))?(?:\[(?P<pid>\d+)\])?"
)

_Rule = tuple[re.Pattern[str], Callable[[re.Match[str], str], dict[str, object]]]


def _security(
    event_type: str, decision: str, user: str | None, resource: str, **extra: object
) -> dict[str, object]:
    fields: dict[str, object] = {
        "event_class": "security",
        "event_type": event_type,
        "user_id": user or "unknown",
        "resource": resource,
        "decision": decision,
    }
    fields.update({key: value for key, value in extra.items() if value})

    return fields


def _audit(
    action: str, actor: str, resource: str, outcome: str, **extra: object
) -> dict[str, object]:
    fields: dict[str, object] = {
        "event_class": "audit",
        "action": action,
        "actor": actor,
        "resource": resource,
        "outcome": outcome,
    }
    fields.update({key: value for key, value in extra.items() if value})

    return fields


def _failed_login(match: re.Match[str], program: str) -> dict[str, object]:
    repeated = re.match(r"message repeated (\d+) times", match.string)
    invalid = bool(match["invalid"])

    return _security(
        "login.invalid_user" if invalid else "login.failed",
        "deny",
        match["user"],
        program,
        auth_method=match["method"],
        remote_addr=match["addr"],
        remote_port=int(match["port"]),
        repeated=int(repeated[1]) if repeated else None,
    )


def _accepted_login(match: re.Match[str], program: str) -> dict[str, object]:
    return _security(
        "login.accepted",
        "allow",
        match["user"],
        program,
        auth_method=match["method"],
        remote_addr=match["addr"],
        remote_port=int(match["port"]),
    )


def _invalid_user(match: re.Match[str], program: str) -> dict[str, object]:
    return _security(
        "login.invalid_user",
        "deny",
        match["user"],
        program,
        remote_addr=match.groupdict().get("addr"),
    )


def _break_in(match: re.Match[str], program: str) -> dict[str, object]:
    return _security(
        "login.break_in_attempt",
        "deny",
        None,
        program,
        remote_addr=match["addr"],
        remote_host=match["rhost"],
    )


def _auth_failure(match: re.Match[str], program: str) -> dict[str, object]:
    return _security(
        "login.auth_failure",
        "deny",
        match["user"],
        program,
        remote_addr=match["addr"],
        failures=int(match["count"]) if match["count"] else None,
    )


def _unknown_user(match: re.Match[str], program: str) -> dict[str, object]:
    return _security("login.unknown_user", "deny", None, program)


def _too_many_failures(match: re.Match[str], program: str) -> dict[str, object]:
    return _security("login.too_many_failures", "deny", match["user"], program)


def _remote_auth_failure(match: re.Match[str], program: str) -> dict[str, object]:
    addr = match.groupdict().get("addr")

    return _security("login.auth_failure", "deny", None, program, remote_addr=addr)


def _anonymous_ftp(match: re.Match[str], program: str) -> dict[str, object]:
    return _security(
        "login.accepted", "allow", "anonymous", program, remote_addr=match["addr"]
    )


def _root_console_login(match: re.Match[str], program: str) -> dict[str, object]:
    # Written by login(1) under the tag "-- root" for a console login.
    return _security("login.accepted", "allow", "root", "login", tty=match["tty"])


def _session(match: re.Match[str], program: str) -> dict[str, object]:
    action = "session.open" if match["state"] == "opened" else "session.close"

    opened_by = match["by"]
    if opened_by and opened_by.startswith("(") and opened_by.endswith(")"):
        opened_by = opened_by[1:-1]

    return _audit(action, match["user"], program, "success", opened_by=opened_by)


def _cron_job_failed(match: re.Match[str], program: str) -> dict[str, object]:
    # The daily cron script that runs logrotate logs this line under the tag
    # "logrotate" when the program exits with a non-zero status.
    return _audit(
        "cron.job", "cron", program, "failure", exit_status=int(match["status"])
    )


def _service(match: re.Match[str], program: str) -> dict[str, object]:
    action = {"startup": "service.start", "shutdown": "service.stop"}[match["verb"]]
    outcome = "success" if match["result"] == "succeeded" else "failure"

    return _audit(action, "init", match["service"], outcome)


def _service_starting(match: re.Match[str], program: str) -> dict[str, object]:
    outcome = "success" if match["result"] == "succeeded" else "failure"

    return _audit("service.start", "init", match["service"], outcome)


def _service_restart(match: re.Match[str], program: str) -> dict[str, object]:
    return _audit("service.restart", "init", program, "success")


# Tried in order on the message after the syslog header; the first match wins.
_SYSLOG_RULES: list[_Rule] = [
    (
        re.compile(
            r"(?:message repeated \d+ times: \[ )?Failed (?P<method>\S+) for "
            r"(?P<invalid>invalid user )?(?P<user>.*?) from (?P<addr>\S+) "
            r"port (?P<port>\d+)"
        ),
        _failed_login,
    ),
    (
        re.compile(
            r"Accepted (?P<method>\S+) for (?P<user>\S+) from (?P<addr>\S+) "
            r"port (?P<port>\d+)"
        ),
        _accepted_login,
    ),
    (re.compile(r"Invalid user (?P<user>.*?) from (?P<addr>\S+)\Z"), _invalid_user),
    (
        re.compile(r"input_userauth_request: invalid user (?P<user>.*?) \[preauth\]"),
        _invalid_user,
    ),
    (
        re.compile(
            r"reverse mapping checking getaddrinfo for (?P<rhost>\S+) "
            r"\[(?P<addr>[^\]]+)\] failed - POSSIBLE BREAK-IN ATTEMPT!"
        ),
        _break_in,
    ),
    (
        re.compile(
            r"(?:pam_unix\(\S+\): )?(?:PAM (?P<count>\d+) more )?authentication "
            r"failures?; .*?rhost=(?P<addr>\S*)(?:\s+user=(?P<user>\S+))?"
        ),
        _auth_failure,
    ),
    (re.compile(r"(?:pam_unix\(\S+\): )?check pass; user unknown"), _unknown_user),
    (
        re.compile(
            r"Disconnecting: Too many authentication failures for (?P<user>\S+)"
        ),
        _too_many_failures,
    ),
    (re.compile(r"Authentication failed from (?P<addr>[^\s(]+)"), _remote_auth_failure),
    (re.compile(r"Kerberos authentication failed"), _remote_auth_failure),
    (re.compile(r"Couldn't authenticate user"), _remote_auth_failure),
    (re.compile(r"ANONYMOUS FTP LOGIN FROM (?P<addr>[^,\s]+)"), _anonymous_ftp),
    (re.compile(r"ROOT LOGIN ON (?P<tty>\S+)"), _root_console_login),
    (
        re.compile(
            r"(?:pam_unix\(\S+\): )?session (?P<state>opened|closed) for user "
            r"(?P<user>\S+)(?: by (?P<by>\S+))?"
        ),
        _session,
    ),
    (re.compile(r"ALERT exited abnormally with \[(?P<status>\d+)\]"), _cron_job_failed),
    (
        re.compile(
            r"(?P<service>\S+) (?P<verb>startup|shutdown) (?P<result>succeeded|failed)"
        ),
        _service,
    ),
    (
        re.compile(r"Starting (?P<service>[^:\s]+):\s+(?P<result>succeeded|failed)"),
        _service_starting,
    ),
    (re.compile(r"restart\.\Z"), _service_restart),
]


def _parse_syslog(text: str) -> tuple[str, str, dict[str, object]] | None:
    header = _SYSLOG_HEADER.match(text)
    if header is None:
        return None
    tag = _SYSLOG_TAG.match(header["tag"])
    program = tag["program"] if tag else header["tag"]
    message = header["text"].rstrip()
    common: dict[str, object] = {
        "source_time": header["source_time"],
        "host": header["host"],
        "program": program,
    }
    if tag and tag["pid"]:
        common["pid"] = int(tag["pid"])

    fields = _classify_syslog(message, program)
    fields.update(common)
    if fields["event_class"] == "application":
        method = "error" if message.startswith(("error:", "fatal:")) else "info"
    elif fields.get("decision") == "deny" or fields.get("outcome") == "failure":
        method = "warning"
    else:
        method = "info"

    return method, message, fields


def _classify_syslog(message: str, program: str) -> dict[str, object]:
    for pattern, build in _SYSLOG_RULES:
        match = pattern.match(message)
        if match:
            return build(match, program)

    return {"event_class": "application", "logger": program}


# -- Apache error log ----------------------------------------------------------

_APACHE = re.compile(
    r"\[(?P<source_time>[^\]]+)\] \[(?P<level>[a-z]+)\] "
    r"(?:\[client (?P<client>[^\]]+)\] )?(?P<text>.*)\Z"
)


def _parse_apache(text: str) -> tuple[str, str, dict[str, object]] | None:
    match = _APACHE.match(text)
    if match is None or match["level"] not in _LEVEL_METHODS:
        return None
    fields: dict[str, object] = {
        "event_class": "application",
        "logger": "httpd",
        "source_time": match["source_time"],
        "source_level": match["level"],
    }
    if match["client"]:
        fields["client_addr"] = match["client"]

    return _LEVEL_METHODS[match["level"]], match["text"].rstrip(), fields


# -- HDFS ----------------------------------------------------------------------

_HDFS = re.compile(
    r"(?P<date>\d{6}) (?P<time>\d{6}) (?P<thread>\d+) (?P<level>[A-Z]+) "
    r"(?P<logger>[^:\s]+): (?P<text>.*)\Z"
)


def _parse_hdfs(text: str) -> tuple[str, str, dict[str, object]] | None:
    match = _HDFS.match(text)
    if match is None or match["level"] not in _LEVEL_METHODS:
        return None
    fields: dict[str, object] = {
        "event_class": "application",
        "logger": match["logger"],
        "source_time": f"{match['date']} {match['time']}",
        "source_level": match["level"],
        "thread": int(match["thread"]),
    }

    return _LEVEL_METHODS[match["level"]], match["text"].rstrip(), fields


# -- the registry --------------------------------------------------------------

_Parser = Callable[[str], tuple[str, str, dict[str, object]] | None]

# file name -> parser; the replay reads these files in this order.
SOURCES: dict[str, _Parser] = {
    "OpenSSH_2k.log": _parse_syslog,
    "Linux_2k.log": _parse_syslog,
    "Apache_2k.log": _parse_apache,
    "HDFS_2k.log": _parse_hdfs,
}


def parse_line(source_file: str, line_no: int, text: str) -> LineEvent:
    """Parse one line of ``source_file`` (a name in ``SOURCES``).

    Args:
        source_file: the file's base name; it selects the parser.
        line_no: the line's number in the file, counted from 1.
        text: the line without its newline.

    Returns:
        The event, which carries ``source_file`` and ``line_no``. A line its
        parser does not recognise becomes an application event with the whole
        line as message and ``parsed=False``.
    """
    text = text.rstrip("\r\n")
    parsed = SOURCES[source_file](text)
    if parsed is None:
        method, message = "info", text
        fields: dict[str, object] = {
            "event_class": "application",
            "logger": source_file,
            "parsed": False,
        }
    else:
        method, message, fields = parsed
    fields["source_file"] = source_file
    fields["line_no"] = line_no

    return LineEvent(method, message, fields)
