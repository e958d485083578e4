"""The fleet file: parsing, defaults, jump hosts, ~/.ssh/config aliases, and errors that name the entry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgekit.fleet.inventory import Device, InventoryError, device_from_alias, load_fleet, select


def write(tmp_path: Path, text: str, name: str = "fleet.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "id_test"
    path.parent.mkdir()
    path.write_text("not really a key; the inventory only checks that it exists\n")
    return path


def test_full_fleet(tmp_path: Path, key: Path):
    fleet = write(
        tmp_path,
        """
[defaults]
user = "edge"
key = "keys/id_test"
python = "/opt/venv/bin/python"

[[device]]
name = "bastion"
host = "203.0.113.1"
port = 2200
tags = ["infra"]

[[device]]
name = "jetson-1"
host = "10.0.0.12"
user = "nvidia"
target = "jetson-trt"
tags = ["jetson", "lab"]
workdir = "/data/edgekit"
jump = "bastion"
known_hosts = "lab_known_hosts"

[[device]]
name = "pi"
host = "10.0.0.13"
target = "x86-ort"
tags = ["lab"]
jump = "hop@198.51.100.7:2022"
""",
    )
    devices = load_fleet(fleet, ssh_config=None)
    assert [d.name for d in devices] == ["bastion", "jetson-1", "pi"]
    bastion, jetson, pi = devices
    assert (bastion.host, bastion.port, bastion.user, bastion.key) == ("203.0.113.1", 2200, "edge", key)
    assert bastion.workdir == "~/.edgekit" and bastion.python == "/opt/venv/bin/python"
    assert bastion.known_hosts == Path("~/.ssh/known_hosts").expanduser()
    assert jetson.user == "nvidia" and jetson.tags == ("jetson", "lab") and jetson.target == "jetson-trt"
    assert jetson.workdir == "/data/edgekit" and jetson.jump == bastion
    assert jetson.known_hosts == tmp_path / "lab_known_hosts"
    assert pi.jump is not None and (pi.jump.user, pi.jump.host, pi.jump.port) == ("hop", "198.51.100.7", 2022)
    assert pi.jump.key == key and pi.port == 22
    assert pi.address == "edge@10.0.0.13:22"


def test_select_by_tags_and_names(tmp_path: Path):
    devices = [
        Device("a", "h1", tags=("lab", "arm64")),
        Device("b", "h2", tags=("lab",)),
        Device("c", "h3", tags=("prod", "arm64")),
    ]
    assert [d.name for d in select(devices, ["lab"])] == ["a", "b"]
    assert [d.name for d in select(devices, ["arm64", "lab"])] == ["a"]
    assert [d.name for d in select(devices)] == ["a", "b", "c"]
    assert [d.name for d in select(devices, names=["c", "a"])] == ["a", "c"]
    with pytest.raises(InventoryError, match=r"no device has all of the tags \['gpu'\].*arm64, lab, prod"):
        select(devices, ["gpu"])
    with pytest.raises(InventoryError, match=r"no device named 'bb'.*did you mean 'b'"):
        select(devices, names=["bb"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[device]]\nname = "a"\nhost = "h"\n[[device]]\nname = "a"\nhost = "h2"\n', r"device 'a'.*used twice"),
        ('[[device]]\nname = "a"\n', r"device 'a': `host` is missing"),
        ('[[device]]\nname = "a"\nhost = "h"\nport = 0\n', r"device 'a': `port` must be .* 1 to 65535 \(got 0\)"),
        ('[[device]]\nname = "a"\nhost = "h"\nport = "ssh"\n', r"device 'a': `port` must be"),
        ('[[device]]\nname = "a"\nhost = "h"\nport = 70000\n', r"`port` must be"),
        ('[[device]]\nname = "a"\nhots = "h"\n', r"device 'a': unknown key 'hots' \(did you mean 'host'\?\)"),
        ('[[device]]\nhost = "h"\n', r"device #1: `name` must be"),
        ('[[device]]\nname = "a"\nhost = "h"\ntags = "lab"\n', r"`tags` must be a list"),
        ('[[device]]\nname = "a"\nhost = "h"\nkey = "missing_key"\n', r"key file .*missing_key does not exist"),
        ('[[device]]\nname = "a"\nhost = "h"\njump = "b"\n[[device]]\nname = "b"\nhost = "h"\njump = "a"\n', "loop"),
        ('[defaults]\nname = "x"\n[[device]]\nname = "a"\nhost = "h"\n', r"\[defaults\]: unknown key 'name'"),
        ('[[devices]]\nname = "a"\nhost = "h"\n', r"unknown top-level key 'devices' \(did you mean 'device'\?\)"),
        ("", "lists no devices"),
        ("[[device]\n", "not valid TOML"),
    ],
)
def test_errors_name_the_file_and_the_entry(tmp_path: Path, body: str, message: str):
    fleet = write(tmp_path, body)
    with pytest.raises(InventoryError, match=message) as info:
        load_fleet(fleet, ssh_config=None)
    assert str(fleet) in str(info.value)


def test_missing_file(tmp_path: Path):
    with pytest.raises(InventoryError, match=r"cannot read fleet file .*nope\.toml"):
        load_fleet(tmp_path / "nope.toml")


def test_ssh_config_aliases(tmp_path: Path, key: Path):
    config = write(
        tmp_path,
        f"""
Host myjet
    HostName 10.1.2.3
    Port 2222
    User nvidia
    IdentityFile {key}
    ProxyJump gate

Host gate
    HostName 192.0.2.50
    User jumper

Host *
    UserKnownHostsFile {tmp_path}/kh
""",
        name="ssh_config",
    )
    fleet = write(
        tmp_path,
        '[[device]]\nname = "jet"\nhost = "myjet"\ntags = ["jetson"]\n'
        '[[device]]\nname = "jet-direct"\nhost = "myjet"\nport = 22\nuser = "me"\njump = "me@192.0.2.60"\n',
    )
    jet, direct = load_fleet(fleet, ssh_config=config)
    assert (jet.host, jet.port, jet.user, jet.key) == ("10.1.2.3", 2222, "nvidia", key)
    assert jet.known_hosts == tmp_path / "kh"
    assert jet.jump is not None and (jet.jump.host, jet.jump.user, jet.jump.port) == ("192.0.2.50", "jumper", 22)
    # the fleet file wins over the SSH config, also for the jump host
    assert (direct.host, direct.port, direct.user) == ("10.1.2.3", 22, "me")
    assert direct.jump is not None and (direct.jump.host, direct.jump.user) == ("192.0.2.60", "me")

    alias = device_from_alias("myjet", ssh_config=config, target="jetson-trt", tags=["x"])
    assert (alias.name, alias.host, alias.port, alias.user, alias.target) == (
        "myjet",
        "10.1.2.3",
        2222,
        "nvidia",
        "jetson-trt",
    )
    assert alias.jump is not None and alias.jump.host == "192.0.2.50"
    plain = device_from_alias("root@[::1]:2022", ssh_config=None)
    assert (plain.user, plain.host, plain.port) == ("root", "::1", 2022)
    assert plain.address == "root@[::1]:2022"
    with pytest.raises(InventoryError, match="unknown key 'colour'"):
        device_from_alias("myjet", ssh_config=config, colour="red")


def test_connect_timeout_and_retries(tmp_path: Path):
    fleet = write(
        tmp_path,
        '[defaults]\nconnect_timeout = 2.5\n\n[[device]]\nname = "a"\nhost = "h"\nconnect_retries = 0\n\n'
        '[[device]]\nname = "b"\nhost = "h2"\njump = "bastion"\n',
    )
    a, b = load_fleet(fleet, ssh_config=None)
    assert (a.connect_timeout, a.connect_retries) == (2.5, 0)
    assert (b.connect_timeout, b.connect_retries) == (2.5, 2)
    assert (b.jump.connect_timeout, b.jump.connect_retries) == (2.5, 2)  # a jump host waits as its device does
    assert (Device("c", "h").connect_timeout, Device("c", "h").connect_retries) == (10.0, 2)
    for body, message in (
        ("connect_timeout = 0", "`connect_timeout` must be seconds above 0 and at most 600"),
        ('connect_timeout = "5"', "`connect_timeout` must be seconds"),
        ("connect_retries = -1", "`connect_retries` must be a whole number from 0 to 10"),
        ("connect_retries = 1.5", "`connect_retries` must be a whole number"),
    ):
        bad = write(tmp_path, f'[[device]]\nname = "x"\nhost = "h"\n{body}\n', "bad.toml")
        with pytest.raises(InventoryError, match=f"device 'x': {re.escape(message)}"):
            load_fleet(bad, ssh_config=None)
