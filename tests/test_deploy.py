"""The files that deploy the broker stay in step with it.

No Docker engine runs here, so docker-compose.yml and the Dockerfile are only
checked: they parse, and every broker flag and ``ZLOG_*`` variable they use
is one the broker reads. PyYAML is not a dependency; the compose file keeps
to a small subset of YAML (block mappings, block sequences of scalars, flow
sequences written as JSON, comments) that ``read_yaml_subset`` reads and
that any YAML parser reads the same way. The systemd files are checked with
systemd's own tools when they are installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from zlog.broker import settings
from zlog.cli import build_parser

ROOT = Path(__file__).parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SYSTEMD = ROOT / "systemd"

_LINE = re.compile(r"(?P<indent> *)(?P<dash>- )?(?P<key>[A-Za-z0-9_.-]+:)?(?P<rest>.*)")


def _scalar(text: str) -> object:
    text = text.strip()
    if text.startswith(("[", '"')):
        return json.loads(text)
    if text.startswith(("'", "{", "&", "*", "|", ">", "!")):
        raise ValueError(f"outside the YAML subset: {text!r}")

    return text


def read_yaml_subset(text: str) -> object:
    """Parse block mappings and sequences of scalars, by indentation."""
    lines = []
    for raw in text.splitlines():
        if "\t" in raw:
            raise ValueError(f"tab in {raw!r}")
        if raw.strip() and not raw.lstrip().startswith("#"):
            match = _LINE.fullmatch(raw)
            lines.append((len(match["indent"]), match))

    def block(start: int, indent: int) -> tuple[object, int]:
        result: dict | list | None = None
        i = start
        while i < len(lines) and lines[i][0] >= indent:
            depth, match = lines[i]
            if depth != indent:
                raise ValueError(f"unexpected indentation: {match.string!r}")
            if match["dash"]:
                result = [] if result is None else result
                result.append(_scalar(match.string[depth + 2 :]))
                i += 1
                continue
            if not match["key"]:
                raise ValueError(f"outside the YAML subset: {match.string!r}")
            result = {} if result is None else result
            key, rest = match["key"][:-1], match["rest"].strip()
            if rest:
                result[key] = _scalar(rest)
                i += 1
            elif i + 1 < len(lines) and lines[i + 1][0] > indent:
                result[key], i = block(i + 1, lines[i + 1][0])
            else:
                result[key] = None
                i += 1

        return result, i

    document, end = block(0, 0)
    if end != len(lines):
        raise ValueError(f"unparsed from {lines[end][1].string!r}")

    return document


@pytest.fixture(scope="module")
def compose() -> dict:
    return read_yaml_subset(COMPOSE.read_text())


def broker_flags() -> set[str]:
    parser = build_parser()
    broker = parser._subparsers._group_actions[0].choices["broker"]

    return {flag for action in broker._actions for flag in action.option_strings}


def test_compose_runs_kafka_broker_and_worker(compose):
    services = compose["services"]

    assert set(services) == {"kafka", "broker", "worker"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == (
        "broker,controller"
    )
    assert services["broker"]["build"] == "."
    assert services["worker"]["build"] == "."


def test_broker_and_worker_share_the_socket_volume(compose):
    services = compose["services"]
    socket_path = services["broker"]["environment"]["ZLOG_SOCKET"]
    mounts = {
        name: {m.split(":")[1]: m.split(":")[0] for m in services[name]["volumes"]}
        for name in ("broker", "worker")
    }
    directory = str(Path(socket_path).parent)

    assert services["worker"]["environment"]["ZLOG_SOCKET"] == socket_path
    assert mounts["broker"][directory] == mounts["worker"][directory]
    assert mounts["broker"][directory] in compose["volumes"]


def test_broker_options_in_compose_exist(compose):
    """Every flag and ZLOG_* variable the compose file gives the broker is read."""
    broker = compose["services"]["broker"]
    env_vars = {setting.env_var for setting in settings.SETTINGS}
    env_vars.add(settings.CONFIG_ENV)

    given_flags = {arg for arg in broker["command"] if arg.startswith("--")}
    given_env = set(broker["environment"])

    assert given_flags <= broker_flags()
    assert given_env <= env_vars
    address = broker["environment"]["ZLOG_METRICS_ADDRESS"]
    assert f"127.0.0.1:{address.rpartition(':')[2]}:" in broker["ports"][0]


def test_compose_config_file_is_in_the_image_and_valid(compose):
    command = compose["services"]["broker"]["command"]
    in_image = command[command.index("--config") + 1]
    local = ROOT / "examples" / Path(in_image).name

    assert local.is_file()
    assert f"examples/{local.name}" in DOCKERFILE.read_text()
    settings.load(local, {}, {})


def test_dockerfile_variables_are_broker_settings():
    text = DOCKERFILE.read_text()
    env_vars = {setting.env_var for setting in settings.SETTINGS}

    used = set(re.findall(r"\b(ZLOG_[A-Z_]+)=", text))

    assert used and used <= env_vars
    assert 'ENTRYPOINT ["zlog"]' in text


def test_yaml_subset_reader_refuses_what_it_does_not_understand():
    with pytest.raises(ValueError, match="subset"):
        read_yaml_subset("a:\n  b: &anchor x\n")
    with pytest.raises(ValueError, match="indentation"):
        read_yaml_subset("a:\n    b: 1\n  c: 2\n")


def _tool(name: str) -> str | None:
    return shutil.which(name)


@pytest.mark.skipif(
    not (_tool("systemd-sysusers") and _tool("systemd-tmpfiles")),
    reason="systemd is not installed (.ci/run installs it)",
)
def test_sysusers_and_tmpfiles_make_user_group_and_socket_directory(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("passwd", "group", "shadow", "gshadow"):
        (etc / name).touch()
    root = f"--root={tmp_path}"

    for command in (
        ["systemd-sysusers", root, SYSTEMD / "zlog-sysusers.conf"],
        ["systemd-tmpfiles", root, "--create", SYSTEMD / "zlog-tmpfiles.conf"],
    ):
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    user = re.search(
        r"^zlog:x:(\d+):(\d+):zlog broker:/var/lib/zlog:",
        (etc / "passwd").read_text(),
        re.M,
    )
    group = re.search(r"^zlog:x:(\d+):", (etc / "group").read_text(), re.M)
    assert user and group and user[2] == group[1]
    directory = (tmp_path / "run" / "zlog").stat()
    assert directory.st_mode & 0o7777 == 0o2750
    assert (directory.st_uid, directory.st_gid) == (int(user[1]), int(group[1]))
