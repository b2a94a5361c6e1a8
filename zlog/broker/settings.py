"""Layered configuration: a TOML file, then the environment, then flags.

Every setting the broker reads is one row of ``SETTINGS``: its dotted key in
the file (``kafka.acks``), its environment variable (``ZLOG_KAFKA_ACKS``), its
command-line flag (``--acks``), the ``BrokerConfig`` field it fills and how
its text is checked. A value from a later layer replaces one from an earlier
layer; a key nobody set keeps the ``DEFAULT_*`` of ``zlog.broker.config``.

Each value is checked where it is read, and a bad one raises ``ConfigError``
naming the key, the value, where it came from and what is allowed, so an
operator fixes the right line of the right file. The broker's flags are built
from the same table, so the three layers cannot drift apart.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zlog.broker import config as defaults
from zlog.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "SETTINGS",
    "Setting",
    "describe",
    "load",
    "setting_by_key",
]

# Names the configuration file when --config is not given.
CONFIG_ENV = "ZLOG_CONFIG"

MASK = "********"


class _Invalid(ValueError):
    """A value a parser refused; its message says what is allowed."""


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("must be a string")

    return value


def _optional_text(value: Any) -> str | None:
    return _text(value) or None


def _path(value: Any) -> Path | None:
    return Path(_text(value)) if value else None


def _number(kind: type, minimum: float, above: bool = False) -> Callable:
    bound = f"greater than {minimum}" if above else f"at least {minimum}"
    what = "an integer" if kind is int else "a number"

    def parse(value: Any) -> int | float:
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise _Invalid(f"must be {what} {bound}")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise _Invalid(f"must be {what} {bound}") from None
        if number < minimum or (above and number == minimum):
            raise _Invalid(f"must be {what} {bound}")

        return number

    return parse


_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False}
_BOOL_WORDS["0"] = False


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.lower()]

    raise _Invalid("must be true or false")


def _choice(*allowed: str, optional: bool = False) -> Callable:
    def parse(value: Any) -> str | None:
        if optional and value == "":
            return None
        if str(value) not in allowed:
            raise _Invalid("must be one of " + ", ".join(allowed))

        return str(value)

    return parse


def _mode(value: Any) -> int:
    # TOML writes octal as 0o660; the environment and flags as "0660".
    try:
        mode = value if isinstance(value, int) else int(_text(value), 8)
    except ValueError:
        raise _Invalid("must be an octal file mode such as 0660") from None
    if isinstance(mode, bool) or not 0 <= mode <= 0o777:
        raise _Invalid("must be an octal file mode such as 0660")

    return mode


def _servers(value: Any) -> str:
    hosts = value if isinstance(value, list) else str(value).split(",")
    hosts = [str(host).strip() for host in hosts]
    if not hosts or not all(host.rpartition(":")[2].isdigit() for host in hosts):
        raise _Invalid("must be host:port, or several separated by commas")

    return ",".join(hosts)


def _address(value: Any) -> str:
    text = _text(value).strip()
    if text == "off":
        return ""
    host, _, port = text.rpartition(":")
    if text and not (host and port.isdigit() and 0 < int(port) < 65536):
        raise _Invalid('must be host:port, or "off" (or "") to turn metrics off')

    return text


@dataclass(frozen=True, slots=True)
class Setting:
    """One configurable value and the three places it may come from."""

    key: str
    field: str
    parse: Callable[[Any], Any]
    help: str
    flag: str | None = None
    env: str | None = None
    secret: bool = False

    @property
    def env_var(self) -> str:
        """``env``, else ``ZLOG_`` and the key with dots as underscores."""
        return self.env or "ZLOG_" + self.key.replace(".", "_").upper()


_POSITIVE_INT = _number(int, 1)
_POSITIVE_S = _number(float, 0, above=True)

SETTINGS: tuple[Setting, ...] = (
    Setting("socket.path", "socket_path", _path, "Unix socket path",
            "--socket", "ZLOG_SOCKET"),
    Setting("socket.mode", "socket_mode", _mode, "octal mode of the socket file",
            "--socket-mode"),
    Setting("socket.group", "socket_group", _optional_text,
            "group owning the socket file", "--socket-group"),
    Setting("kafka.bootstrap_servers", "bootstrap_servers", _servers,
            "Kafka bootstrap servers", "--bootstrap-servers",
            "KAFKA_BOOTSTRAP_SERVERS"),
    Setting("kafka.security_protocol", "security_protocol",
            _choice(*defaults.SECURITY_PROTOCOLS), "how to reach Kafka",
            "--security-protocol"),
    Setting("kafka.sasl_mechanism", "sasl_mechanism",
            _choice(*defaults.SASL_MECHANISMS, optional=True), "SASL mechanism",
            "--sasl-mechanism"),
    Setting("kafka.sasl_username", "sasl_username", _optional_text,
            "SASL user name", "--sasl-username"),
    # No flag: a password on the command line is visible to every local user.
    Setting("kafka.sasl_password", "sasl_password", _optional_text,
            "SASL password", secret=True),
    Setting("kafka.ssl_cafile", "ssl_cafile", _path,
            "CA bundle that signed Kafka's certificates", "--ssl-cafile"),
    Setting("kafka.ssl_certfile", "ssl_certfile", _path,
            "client certificate (PEM) for TLS client authentication",
            "--ssl-certfile"),
    Setting("kafka.ssl_keyfile", "ssl_keyfile", _path,
            "private key of the client certificate", "--ssl-keyfile"),
    Setting("kafka.compression", "compression", _choice(*defaults.COMPRESSIONS),
            "compression codec", "--compression"),
    Setting("kafka.acks", "acks", _choice(*defaults.ACKS),
            "acknowledgments Kafka gives per batch", "--acks"),
    Setting("kafka.linger_ms", "linger_ms", _number(int, 0),
            "producer linger in milliseconds", "--linger-ms"),
    Setting("kafka.max_batch_bytes", "max_batch_bytes", _POSITIVE_INT,
            "largest Kafka batch, before compression", "--max-batch-bytes"),
    Setting("kafka.send_timeout_s", "send_timeout_s", _POSITIVE_S,
            "seconds Kafka may take to acknowledge a batch before it is spooled",
            "--send-timeout-s"),
    Setting("kafka.ack_spool_after_s", "ack_spool_after_s", _POSITIVE_S,
            "seconds an acked event may wait for Kafka before it is spooled",
            "--ack-spool-after-s"),
    Setting("topics.application", "application_topic", _text,
            "topic of application events", "--application-topic"),
    Setting("topics.audit", "audit_topic", _text, "topic of audit events",
            "--audit-topic"),
    Setting("topics.security", "security_topic", _text,
            "topic of security events", "--security-topic"),
    Setting("topics.create", "create_topics", _bool,
            "create missing topics at start", "--create-topics"),
    Setting("topics.partitions", "topic_partitions", _POSITIVE_INT,
            "partitions of topics the broker creates", "--topic-partitions"),
    Setting("topics.replication", "topic_replication", _POSITIVE_INT,
            "replication factor of topics the broker creates",
            "--topic-replication"),
    Setting("limits.max_frame_bytes", "max_frame_bytes", _POSITIVE_INT,
            "largest frame accepted; ZeroMQ refuses larger ones",
            "--max-frame-bytes"),
    Setting("limits.recv_batch", "recv_batch", _POSITIVE_INT,
            "messages taken from the socket per cycle", "--recv-batch"),
    Setting("limits.recv_max_bytes", "recv_max_bytes", _POSITIVE_INT,
            "bytes of envelopes taken from the socket per cycle",
            "--recv-max-bytes"),
    Setting("limits.drain_timeout_s", "drain_timeout_s", _number(float, 0),
            "seconds allowed to publish what was received after SIGTERM",
            "--drain-timeout-s"),
    Setting("spool.path", "spool_path", _path, "spool file", "--spool-path"),
    Setting("spool.max_bytes", "spool_max_bytes", _POSITIVE_INT,
            "bound of the spool's stored data", "--spool-max-bytes"),
    Setting("spool.drop_policy", "spool_drop_policy",
            _choice(*defaults.DROP_POLICIES),
            "what a full spool may evict", "--spool-drop-policy"),
    Setting("spool.dead_letter_max_bytes", "dead_letter_max_bytes", _POSITIVE_INT,
            "bound of the dead-letter file beside the spool",
            "--dead-letter-max-bytes"),
    Setting("loss.report_interval_s", "loss_report_interval_s", _POSITIVE_S,
            "how often known losses are published as zlog.loss events",
            "--loss-report-interval-s"),
    Setting("metrics.address", "metrics_address", _address,
            'Prometheus endpoint host:port; "off" turns it off',
            "--metrics-address"),
)  # fmt: skip

_BY_KEY = {setting.key: setting for setting in SETTINGS}


def setting_by_key(key: str) -> Setting:
    """The row of ``SETTINGS`` for a dotted key."""
    return _BY_KEY[key]


def _read_file(path: Path) -> dict[str, Any]:
    """The file's values by dotted key; unknown keys and sections are errors."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{str(path)!r} is not valid TOML: {exc}") from exc
    values = {}
    for section, table in document.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"{section} = {table!r} in {str(path)!r}: top-level keys must "
                f"be sections such as [kafka]; known keys: {_known_keys()}"
            )
        for name, value in table.items():
            key = f"{section}.{name}"
            if key not in _BY_KEY:
                raise ConfigError(
                    f"{key} in {str(path)!r} is not a setting; known keys: "
                    f"{_known_keys()}"
                )
            values[key] = value

    return values


def _known_keys() -> str:
    return ", ".join(sorted(_BY_KEY))


def _check(setting: Setting, value: Any, source: str) -> Any:
    try:
        return setting.parse(value)
    except _Invalid as exc:
        shown = MASK if setting.secret else repr(value)
        raise ConfigError(f"{setting.key} = {shown} (from {source}) {exc}") from None


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> tuple[defaults.BrokerConfig, dict[str, str]]:
    """The effective configuration and, per key, where its value came from.

    Args:
        path: the TOML file; None reads ``$ZLOG_CONFIG`` if set, else no file.
        env: the environment (``os.environ`` when None).
        flags: values given on the command line, by dotted key.
    """
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_ENV) or None
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    layers = [(_read_file(Path(path)), str(path))] if path else []
    # An empty variable counts as unset, as shells and env files often leave one.
    from_env = {s.key: env[s.env_var] for s in SETTINGS if env.get(s.env_var)}
    layers.append((from_env, "$"))
    layers.append((dict(flags or {}), "--"))
    for layer, origin in layers:
        for key, value in layer.items():
            setting = _BY_KEY[key]
            source = _source_name(setting, origin)
            values[setting.field] = _check(setting, value, source)
            sources[key] = source
    _check_together(values, sources)

    return _build(values), sources


def _source_name(setting: Setting, origin: str) -> str:
    if origin == "$":
        return "$" + setting.env_var
    if origin == "--":
        return setting.flag or "flags"

    return origin


def _check_together(values: dict[str, Any], sources: dict[str, str]) -> None:
    """Settings that only make sense with others."""
    protocol = values.get("security_protocol", defaults.DEFAULT_SECURITY_PROTOCOL)
    where = sources.get("kafka.security_protocol", "the default")
    if protocol.startswith("SASL_"):
        for key in ("kafka.sasl_mechanism", "kafka.sasl_username"):
            if values.get(_BY_KEY[key].field) is None:
                raise ConfigError(
                    f"kafka.security_protocol = {protocol!r} (from {where}) needs "
                    f"{key} (or ${_BY_KEY[key].env_var})"
                )
        if values.get("sasl_password") is None:
            raise ConfigError(
                f"kafka.security_protocol = {protocol!r} (from {where}) needs "
                "kafka.sasl_password (or $ZLOG_KAFKA_SASL_PASSWORD)"
            )
    if values.get("ssl_certfile") and not values.get("ssl_keyfile"):
        raise ConfigError("kafka.ssl_certfile is set but kafka.ssl_keyfile is not")
    for key in ("kafka.ssl_cafile", "kafka.ssl_certfile", "kafka.ssl_keyfile"):
        file = values.get(_BY_KEY[key].field)
        if file is not None and not file.is_file():
            raise ConfigError(
                f"{key} = {str(file)!r} (from {sources[key]}) is not a readable file"
            )


def _build(values: dict[str, Any]) -> defaults.BrokerConfig:
    from zlog.endpoint import resolve_socket_path

    # ZLOG_SOCKET is already a layer here; the default depends on the user.
    values["socket_path"] = resolve_socket_path(values.get("socket_path"))

    return defaults.BrokerConfig(**values)


def describe(config: defaults.BrokerConfig, sources: Mapping[str, str]) -> str:
    """The effective configuration as TOML, secrets masked, sources as comments."""
    lines = []
    section = None
    for setting in SETTINGS:
        name, key = setting.key.split(".")
        if name != section:
            lines.append(f"{chr(10) if section else ''}[{name}]")
            section = name
        value = getattr(config, setting.field)
        if value is None:
            lines.append(f"# {key} is not set")
            continue
        if setting.secret:
            value = MASK
        source = sources.get(setting.key, "default")
        lines.append(f"{key} = {_toml_value(setting, value)}  # {source}")

    return "\n".join(lines)


def _toml_value(setting: Setting, value: Any) -> str:
    if setting.field == "socket_mode":
        return f"0o{value:03o}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)

    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
