"""Layered configuration: file < environment < flags, and what a bad value says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from zlog.broker import settings
from zlog.broker.cli import config_from_args
from zlog.broker.config import DEFAULT_ACK_SPOOL_AFTER_S
from zlog.cli import build_parser
from zlog.client.compat import PUBLISH_TIMEOUT_S
from zlog.client.emitter import DEFAULT_ACK_TIMEOUT_S
from zlog.errors import ConfigError

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "broker.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(text)

    return path


def test_flag_beats_environment_beats_file(tmp_path):
    """Each layer replaces the one before it, key by key."""
    path = write(
        tmp_path,
        '[kafka]\nlinger_ms = 1\nacks = "1"\n[topics]\naudit = "file.audit"\n',
    )
    env = {"ZLOG_KAFKA_LINGER_MS": "2", "ZLOG_KAFKA_ACKS": "all"}

    config, sources = settings.load(path, env, {"kafka.linger_ms": "3"})

    assert (config.linger_ms, config.acks, config.audit_topic) == (
        3,
        "all",
        "file.audit",
    )
    assert sources["kafka.linger_ms"] == "--linger-ms"
    assert sources["kafka.acks"] == "$ZLOG_KAFKA_ACKS"
    assert sources["topics.audit"] == str(path)


def test_untouched_keys_keep_their_defaults():
    config, sources = settings.load(None, {}, {})

    assert config.acks == "all"
    assert config.metrics_address == "127.0.0.1:9810"
    assert sources == {}


def test_kafka_bootstrap_servers_variable_and_list_in_file(tmp_path):
    path = write(tmp_path, '[kafka]\nbootstrap_servers = ["k1:9092", "k2:9092"]\n')

    from_file, _ = settings.load(path, {}, {})
    from_env, _ = settings.load(path, {"KAFKA_BOOTSTRAP_SERVERS": "k3:9092"}, {})

    assert from_file.bootstrap_servers == "k1:9092,k2:9092"
    assert from_env.bootstrap_servers == "k3:9092"


def test_config_file_named_by_environment_is_read(tmp_path):
    path = write(tmp_path, '[spool]\ndrop_policy = "any-class"\n')

    config, _ = settings.load(None, {"ZLOG_CONFIG": str(path)}, {})

    assert config.spool_drop_policy == "any-class"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '[kafka]\nacks = "0"\n',
            "kafka.acks = '0' (from {path}) must be one of all, 1",
            id="choice",
        ),
        pytest.param(
            "[limits]\nrecv_batch = 0\n",
            "limits.recv_batch = 0 (from {path}) must be an integer at least 1",
            id="minimum",
        ),
        pytest.param(
            '[socket]\nmode = "rw"\n',
            "socket.mode = 'rw' (from {path}) must be an octal file mode",
            id="mode",
        ),
        pytest.param(
            "[kafka]\nsend_timeout_s = 0\n",
            "kafka.send_timeout_s = 0 (from {path}) must be a number greater than 0",
            id="positive",
        ),
        pytest.param(
            '[metrics]\naddress = "localhost"\n',
            "metrics.address = 'localhost' (from {path}) must be host:port",
            id="address",
        ),
        pytest.param(
            "[kafka]\nlingerms = 5\n",
            "kafka.lingerms in {path!r} is not a setting; known keys:",
            id="unknown-key",
        ),
        pytest.param(
            "acks = 1\n",
            "acks = 1 in {path!r}: top-level keys must be sections",
            id="not-a-section",
        ),
        pytest.param("[kafka\n", "{path!r} is not valid TOML", id="syntax"),
    ],
)
def test_bad_file_value_names_key_value_source_and_what_is_allowed(
    tmp_path, text, expected
):
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as raised:
        settings.load(path, {}, {})

    assert expected.format(path=str(path)) in str(raised.value)


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match=r"\(from \$ZLOG_TOPICS_CREATE\) must be"):
        settings.load(None, {"ZLOG_TOPICS_CREATE": "maybe"}, {})


def test_sasl_needs_mechanism_user_and_password():
    env = {
        "ZLOG_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "ZLOG_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "ZLOG_KAFKA_SASL_USERNAME": "zlog",
    }

    with pytest.raises(ConfigError, match=r"needs kafka\.sasl_password"):
        settings.load(None, env, {})

    config, _ = settings.load(None, {**env, "ZLOG_KAFKA_SASL_PASSWORD": "s3cret"}, {})
    options = config.kafka_client_options()
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "zlog"
    assert options["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(config)


def test_tls_gives_aiokafka_an_ssl_context():
    config, _ = settings.load(None, {"ZLOG_KAFKA_SECURITY_PROTOCOL": "SSL"}, {})

    options = config.kafka_client_options()

    assert type(options["ssl_context"]).__name__ == "SSLContext"
    assert options["security_protocol"] == "SSL"


def test_missing_tls_file_is_named(tmp_path):
    missing = tmp_path / "ca.pem"

    with pytest.raises(ConfigError, match=r"kafka.ssl_cafile = '.*ca.pem' \(from --"):
        settings.load(None, {}, {"kafka.ssl_cafile": str(missing)})


def test_description_masks_the_password_and_reads_back_as_the_same_config(tmp_path):
    """What config check prints is a valid file describing the same settings."""
    env = {
        "ZLOG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "ZLOG_KAFKA_SASL_MECHANISM": "PLAIN",
        "ZLOG_KAFKA_SASL_USERNAME": "zlog",
        "ZLOG_KAFKA_SASL_PASSWORD": "hunter2",
        "ZLOG_SOCKET_MODE": "0600",
    }
    config, sources = settings.load(None, env, {})

    text = settings.describe(config, sources)

    assert "hunter2" not in text
    assert 'sasl_password = "********"  # $ZLOG_KAFKA_SASL_PASSWORD' in text
    again, _ = settings.load(write(tmp_path, text), {}, {})
    assert again.socket_mode == 0o600
    assert again.security_protocol == "SASL_SSL"


def test_broker_flags_are_the_settings_table():
    """Every setting with a flag parses from the command line, and nothing else."""
    parser = build_parser()
    args = parser.parse_args(
        ["broker", "--acks", "1", "--no-create-topics", "--socket-mode", "0600"]
    )

    config = config_from_args(args)

    assert (config.acks, config.create_topics, config.socket_mode) == (
        "1",
        False,
        0o600,
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["broker", "--sasl-password", "x"])


def zlog(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zlog", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_example_file_passes_config_check():
    result = zlog("config", "check", str(EXAMPLE))

    assert result.returncode == 0, result.stderr
    assert f"# {EXAMPLE}" in result.stdout


def test_config_check_exits_2_with_the_reason(tmp_path):
    path = write(tmp_path, '[spool]\ndrop_policy = "oldest"\n')

    result = zlog("config", "check", str(path))

    assert result.returncode == 2
    assert "spool.drop_policy = 'oldest'" in result.stderr
    assert "application-only, any-class" in result.stderr


def test_broker_with_a_bad_file_exits_2_before_binding(tmp_path, socket_path):
    path = write(tmp_path, "[limits]\nrecv_batch = -1\n")

    result = zlog("broker", "--config", str(path), "--socket", str(socket_path))

    assert result.returncode == 2
    assert "limits.recv_batch = -1" in result.stderr
    assert not socket_path.exists()


def test_configuration_reference_lists_every_key_variable_and_flag():
    text = (ROOT / "docs" / "configuration.md").read_text()

    for setting in settings.SETTINGS:
        row = f"| `{setting.key}` | `{setting.env_var}` | "
        assert row in text, setting.key
        if setting.flag:
            assert f"`{setting.flag}`" in text, setting.flag


def test_acked_events_are_spooled_well_before_emitters_stop_waiting():
    """By default the broker settles an acked event Kafka has not taken (it
    spools it and acks) with half the emitters' wait left for the spool's
    write, the reply and a busy machine."""
    for wait_s in (DEFAULT_ACK_TIMEOUT_S, PUBLISH_TIMEOUT_S):
        assert wait_s / 2 >= DEFAULT_ACK_SPOOL_AFTER_S
