"""The broker's settings, as one frozen value built before anything starts.

Only data lives here: ``zlog.broker.settings`` builds a ``BrokerConfig``
from a TOML file, the environment and the command line, and checks every
value on the way with a message naming its key. Nothing in this module
imports ZeroMQ or Kafka at module level.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from zlog.errors import ConfigError
from zlog.protocol import DEFAULT_MAX_FRAME_BYTES

__all__ = [
    "ACKS",
    "COMPRESSIONS",
    "DEFAULT_ACKS",
    "DEFAULT_ACK_SPOOL_AFTER_S",
    "DEFAULT_APPLICATION_TOPIC",
    "DEFAULT_AUDIT_TOPIC",
    "DEFAULT_BOOTSTRAP_SERVERS",
    "DEFAULT_DEAD_LETTER_MAX_BYTES",
    "DEFAULT_DRAIN_TIMEOUT_S",
    "DEFAULT_LINGER_MS",
    "DEFAULT_LOSS_REPORT_INTERVAL_S",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_METRICS_ADDRESS",
    "DEFAULT_RECV_BATCH",
    "DEFAULT_RECV_MAX_BYTES",
    "DEFAULT_SECURITY_PROTOCOL",
    "DEFAULT_SECURITY_TOPIC",
    "DEFAULT_SEND_TIMEOUT_S",
    "DEFAULT_SOCKET_MODE",
    "DEFAULT_SPOOL_MAX_BYTES",
    "DEFAULT_TOPIC_PARTITIONS",
    "DEFAULT_TOPIC_REPLICATION",
    "DROP_POLICIES",
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "BrokerConfig",
    "bootstrap_servers_from",
    "default_compression",
    "default_spool_path",
]

# The address a developer's single-node Kafka listens on (scripts/kafka).
DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"

# Neutral names; the old deployment's names are one flag each away
# (docs/broker.md lists them).
DEFAULT_APPLICATION_TOPIC = "logs.application.v1"
DEFAULT_AUDIT_TOPIC = "logs.audit.v1"
DEFAULT_SECURITY_TOPIC = "logs.security.v1"

# Three partitions spread one host's keys over a small cluster; one replica
# works on the single-node development Kafka. Production sets 3.
DEFAULT_TOPIC_PARTITIONS = 3
DEFAULT_TOPIC_REPLICATION = 1

# The old code lingered 20 ms per send_and_wait. The broker batches by draining
# its socket instead, and aiokafka keeps one request in flight per Kafka node,
# so batches grow by themselves while Kafka answers: a linger only adds its
# own time. Measured at 10,000 events/s: 5 ms gave batches a Kafka round trip
# of 19 ms on average, 0 ms gave 6 ms.
DEFAULT_LINGER_MS = 0

# Half of Kafka's default message.max.bytes (1 MiB + 12), measured before
# compression, so a full batch always fits a request.
DEFAULT_MAX_BATCH_BYTES = 512 * 1024

# Messages taken from the socket before handing a batch to Kafka: large enough
# to fill several Kafka batches, small enough that status requests and acks
# wait at most a few milliseconds.
DEFAULT_RECV_BATCH = 4096

# Bytes of envelopes taken from the socket in one cycle: bounds the memory a
# cycle holds when envelopes are large (4096 of 1 MiB would be 4 GiB).
DEFAULT_RECV_MAX_BYTES = 8 * 1024 * 1024

# systemd's default stop timeout is 90 s; draining must end well before it.
DEFAULT_DRAIN_TIMEOUT_S = 30.0

# Owner and group may write; others may not even connect.
DEFAULT_SOCKET_MODE = 0o660

# The old code bounded each send_and_wait by 5 s (COMPAT.md); a batch still
# waiting in the producer after this goes to the spool instead. One already
# sent is never given up with acks=all: see DEFAULT_ACK_SPOOL_AFTER_S.
DEFAULT_SEND_TIMEOUT_S = 5.0

# An emitter waits 5 s for an ack (COMPAT.md, zlog.client.emitter's
# DEFAULT_ACK_TIMEOUT_S). With acks=all the producer never gives up on a
# batch it has sent, so an acked event Kafka has not taken within this is
# spooled and acked from there, leaving 3 s for the spool's write, the reply
# and a busy machine.
DEFAULT_ACK_SPOOL_AFTER_S = 2.0

# One hour of outage at 500 events/s of 500-byte envelopes (docs/spool.md).
DEFAULT_SPOOL_MAX_BYTES = 1 << 30

# A quarter of the default spool: over 250 refused events of the largest
# envelope (1 MiB), or about 600,000 of 400 bytes. Bad frames may take a
# quarter of it (zlog.broker.deadletter.BAD_FRAME_SHARE).
DEFAULT_DEAD_LETTER_MAX_BYTES = 256 << 20

# Losses are published at most this often, and only when there are some.
DEFAULT_LOSS_REPORT_INTERVAL_S = 10.0

# Prometheus metrics on loopback only: counts and topic names are not for
# the network at large. A port in the range exporters use; "" turns it off.
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9810"

# Kafka acknowledges a batch once every in-sync replica has it: the only
# setting under which the broker's own acks to emitters mean "safe".
DEFAULT_ACKS = "all"

DEFAULT_SECURITY_PROTOCOL = "PLAINTEXT"

# What aiokafka accepts, as it spells them.
COMPRESSIONS = ("zstd", "lz4", "gzip", "snappy", "none")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# acks=0 is refused: Kafka would answer nothing, so an emitter's ack would
# only mean "handed to the producer".
ACKS = ("all", "1")
DROP_POLICIES = ("application-only", "any-class")

SYSTEM_STATE_DIR = Path("/var/lib/zlog")
DEFAULT_SPOOL_NAME = "spool.db"


def default_compression() -> str:
    """zstd when aiokafka can use it, else lz4, else gzip (always available)."""
    from aiokafka import codec

    if codec.has_zstd():
        return "zstd"
    if codec.has_lz4():
        return "lz4"

    return "gzip"


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything the broker needs to run; see ``zlog broker --help``."""

    socket_path: Path
    bootstrap_servers: str = DEFAULT_BOOTSTRAP_SERVERS
    application_topic: str = DEFAULT_APPLICATION_TOPIC
    audit_topic: str = DEFAULT_AUDIT_TOPIC
    security_topic: str = DEFAULT_SECURITY_TOPIC
    create_topics: bool = True
    topic_partitions: int = DEFAULT_TOPIC_PARTITIONS
    topic_replication: int = DEFAULT_TOPIC_REPLICATION
    linger_ms: int = DEFAULT_LINGER_MS
    compression: str = field(default_factory=default_compression)
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    socket_mode: int = DEFAULT_SOCKET_MODE
    socket_group: str | None = None
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    recv_batch: int = DEFAULT_RECV_BATCH
    recv_max_bytes: int = DEFAULT_RECV_MAX_BYTES
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S
    ack_spool_after_s: float = DEFAULT_ACK_SPOOL_AFTER_S
    spool_path: Path | None = None
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    # "application-only" or "any-class" (zlog.broker.spool.DropPolicy).
    spool_drop_policy: str = "application-only"
    dead_letter_max_bytes: int = DEFAULT_DEAD_LETTER_MAX_BYTES
    loss_report_interval_s: float = DEFAULT_LOSS_REPORT_INTERVAL_S
    acks: str = DEFAULT_ACKS
    security_protocol: str = DEFAULT_SECURITY_PROTOCOL
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    metrics_address: str = DEFAULT_METRICS_ADDRESS

    def __post_init__(self) -> None:
        for name in ("topic_partitions", "topic_replication", "recv_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.linger_ms < 0 or self.drain_timeout_s < 0:
            raise ConfigError("linger_ms and drain_timeout_s cannot be negative")
        if not 0 <= self.socket_mode <= 0o777:
            raise ConfigError(f"socket mode {self.socket_mode:o} is not a mode")
        if self.send_timeout_s <= 0 or self.loss_report_interval_s <= 0:
            raise ConfigError("send_timeout_s and loss_report_interval_s must be > 0")
        if self.ack_spool_after_s <= 0:
            raise ConfigError("ack_spool_after_s must be > 0")
        if self.spool_max_bytes < 1 or self.dead_letter_max_bytes < 1:
            raise ConfigError(
                "spool_max_bytes and dead_letter_max_bytes must be at least 1"
            )
        if self.acks not in ACKS or self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"acks {self.acks!r} or security protocol "
                f"{self.security_protocol!r} is not supported"
            )
        if self.spool_drop_policy not in DROP_POLICIES:
            raise ConfigError(
                f"spool drop policy {self.spool_drop_policy!r} is not "
                "application-only or any-class"
            )
        if self.spool_path is None:
            object.__setattr__(self, "spool_path", default_spool_path(self.socket_path))

    @property
    def ledger_path(self) -> Path:
        """The hand-off ledger (``zlog.broker.handoff``): SQLite beside the spool."""
        return self.spool_path.with_name(self.spool_path.stem + ".ledger.db")

    @property
    def dead_letter_path(self) -> Path:
        """The dead-letter file: JSON lines beside the spool."""
        return self.spool_path.with_name(self.spool_path.stem + ".dead-letter.jsonl")

    @property
    def topics(self) -> tuple[str, str, str]:
        """The application, audit and security topics, in that order."""
        return (self.application_topic, self.audit_topic, self.security_topic)

    @property
    def compression_type(self) -> str | None:
        """The codec as aiokafka names it: None for "none"."""
        return None if self.compression == "none" else self.compression

    def kafka_client_options(self) -> dict[str, object]:
        """Security settings as keyword arguments of aiokafka's clients."""
        options: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile,
                certfile=self.ssl_certfile,
                keyfile=self.ssl_keyfile,
            )
        if self.security_protocol.startswith("SASL_"):
            options["sasl_mechanism"] = self.sasl_mechanism
            # aiokafka reads these two for SCRAM as well as PLAIN.
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password

        return options


def bootstrap_servers_from(value: str | None) -> str:
    """``value``, else ``$KAFKA_BOOTSTRAP_SERVERS``, else the default."""
    from_env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")

    return value or from_env or DEFAULT_BOOTSTRAP_SERVERS


def default_spool_path(socket_path: Path) -> Path:
    """Where the spool lives unless configured: the state directory.

    ``$STATE_DIRECTORY`` when systemd's ``StateDirectory=`` set it, else
    ``/var/lib/zlog`` as root, else ``$XDG_STATE_HOME/zlog`` or
    ``~/.local/state/zlog``. A broker on the default socket uses
    ``spool.db``; one on another socket gets a file named after its socket
    path, so two brokers on one host never contend for one spool while a
    restarted broker finds its own.
    """
    from zlog.endpoint import default_socket_path

    # systemd may list several directories, separated by colons.
    from_systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if from_systemd:
        state_dir = Path(from_systemd)
    elif os.geteuid() == 0:
        state_dir = SYSTEM_STATE_DIR
    else:
        xdg_state = os.environ.get("XDG_STATE_HOME")
        base = Path(xdg_state) if xdg_state else Path.home() / ".local" / "state"
        state_dir = base / "zlog"
    if socket_path == default_socket_path():
        return state_dir / DEFAULT_SPOOL_NAME
    digest = hashlib.sha256(os.fsencode(socket_path)).hexdigest()[:12]

    return state_dir / f"spool-{digest}.db"
