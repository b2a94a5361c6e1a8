"""Where the broker's socket is found, by the broker and its clients alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from zlog import endpoint
from zlog.errors import SocketPathError


@pytest.fixture
def ordinary_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run as uid 1000 with a private runtime dir and no system socket."""
    monkeypatch.setattr(endpoint.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(endpoint.os, "getuid", lambda: 1000)
    monkeypatch.setattr(endpoint, "SYSTEM_SOCKET_PATH", tmp_path / "run/broker.sock")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("ZLOG_SOCKET", raising=False)

    return tmp_path


def test_argument_wins_over_environment(monkeypatch: pytest.MonkeyPatch):
    """An explicit path is used even when ZLOG_SOCKET names another."""
    monkeypatch.setenv("ZLOG_SOCKET", "/tmp/from-env.sock")

    assert endpoint.resolve_socket_path("/tmp/arg.sock") == Path("/tmp/arg.sock")
    assert endpoint.resolve_socket_path() == Path("/tmp/from-env.sock")


def test_ordinary_user_defaults_to_runtime_dir(ordinary_user: Path):
    """Without a system broker a user's socket lives in XDG_RUNTIME_DIR."""
    assert endpoint.resolve_socket_path() == ordinary_user / "zlog/broker.sock"


def test_ordinary_user_finds_the_system_socket(ordinary_user: Path):
    """When the system service's socket exists, users default to it."""
    endpoint.SYSTEM_SOCKET_PATH.parent.mkdir()
    endpoint.SYSTEM_SOCKET_PATH.touch()

    assert endpoint.resolve_socket_path() == endpoint.SYSTEM_SOCKET_PATH


def test_ordinary_user_without_runtime_dir_uses_tmp(
    ordinary_user: Path, monkeypatch: pytest.MonkeyPatch
):
    """With no runtime dir the default is a per-user directory under /tmp."""
    monkeypatch.delenv("XDG_RUNTIME_DIR")

    assert endpoint.resolve_socket_path() == Path("/tmp/zlog-1000/broker.sock")


def test_over_long_path_is_refused_naming_length_and_limit():
    """A path past the Unix limit is refused with its length and the limit."""
    path = Path("/tmp/" + "x" * 120 + ".sock")

    with pytest.raises(
        SocketPathError, match=r"is 130 bytes, over the Unix limit of 107"
    ):
        endpoint.check_socket_path(path)
