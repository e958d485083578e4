"""The SSH transport against a real OpenSSH server: host keys, authentication, quoting, timeouts, jumps."""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import paramiko
import pytest

from edgekit.device.ssh import SshTransport
from edgekit.device.ssh.facts import clean_facts
from edgekit.errors import DeviceError, DeviceTimeout, HostKeyError
from edgekit.fleet.inventory import load_fleet


def test_connect_with_known_hosts(device):
    with SshTransport(device) as ssh:
        assert ssh.name == "loopback" and ssh.connected
        rc, out, err = ssh.exec(["echo", "hello"])
        assert (rc, out, err) == (0, "hello\n", "")
        sock = ssh._client.get_transport().sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert not ssh.connected


def test_unknown_host_key_is_refused(sshd, tmp_path: Path):
    known_hosts = tmp_path / "empty_known_hosts"
    known_hosts.write_text("")
    device = sshd.device(tmp_path, known_hosts=known_hosts)
    with pytest.raises(HostKeyError, match=r"device loopback: the host key of \[127.0.0.1\]:\d+ .* is not in") as info:
        SshTransport(device, retries=0).connect()
    assert "ssh-keyscan" in str(info.value) and "SHA256:" in str(info.value)
    assert known_hosts.read_text() == ""


def test_trust_on_first_use_saves_the_key(sshd, tmp_path: Path):
    known_hosts = tmp_path / "new" / "known_hosts"
    device = sshd.device(tmp_path, known_hosts=known_hosts)
    with SshTransport(device, trust_on_first_use=True) as ssh:
        assert ssh.exec(["true"])[0] == 0
        assert len(ssh.trusted_keys) == 1
    assert known_hosts.read_text() == sshd.known_hosts_entry()
    with SshTransport(device) as ssh:  # now known: no trust on first use needed, and nothing is added
        assert ssh.exec(["true"])[0] == 0 and ssh.trusted_keys == []
    assert known_hosts.read_text() == sshd.known_hosts_entry()


@pytest.mark.parametrize("tofu", [False, True])
def test_changed_host_key_is_always_refused(sshd, tmp_path: Path, tofu: bool):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("# my hosts\n" + sshd.known_hosts_entry(sshd.other_host_key_line))
    before = known_hosts.read_text()
    device = sshd.device(tmp_path, known_hosts=known_hosts)
    with pytest.raises(HostKeyError, match="has CHANGED") as info:
        SshTransport(device, trust_on_first_use=tofu).connect()
    message = str(info.value)
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}' -f {known_hosts}" in message
    assert message.startswith("device loopback:")
    assert known_hosts.read_text() == before


def test_wrong_key_is_refused_with_advice(sshd, tmp_path: Path):
    device = sshd.device(tmp_path, key=sshd.other_key)
    with pytest.raises(DeviceError, match=r"device loopback: .* refused key authentication .*ssh-copy-id"):
        SshTransport(device, retries=0).connect()


def test_unreachable_device(sshd, tmp_path: Path):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    device = sshd.device(tmp_path, port=port)
    started = time.monotonic()
    with pytest.raises(DeviceError, match=r"device loopback: .* refused the connection"):
        SshTransport(device, retries=1).connect()
    assert time.monotonic() - started >= 0.5  # one retry after a back-off


def test_arguments_arrive_literally(device):
    tricky = [
        "a b",
        "it's",
        'say "hi"',
        "x; echo INJECTED",
        "$(echo INJECTED)",
        "`echo INJECTED`",
        "*",
        "~",
        "back\\slash",
        "new\nline",
        "",
        "$HOME",
        "ünïcødé",
        "--flag=1 | cat",
    ]
    with SshTransport(device) as ssh:
        rc, out, err = ssh.exec([sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *tricky])
    assert rc == 0, err
    assert json.loads(out) == tricky


def test_exit_code_stderr_and_stdin(device):
    with SshTransport(device) as ssh:
        rc, out, err = ssh.exec(["sh", "-c", 'cat; echo "to stderr" >&2; exit 3'], stdin="from stdin")
        assert (rc, out, err) == (3, "from stdin", "to stderr\n")
        big = ssh.exec([sys.executable, "-c", "print('x' * 3_000_000)"])[1]
        assert len(big) == 3_000_001


def test_timeout_names_the_device(device):
    with SshTransport(device) as ssh:
        started = time.monotonic()
        with pytest.raises(DeviceTimeout, match=r"device loopback: sleep did not finish within 0.5 s"):
            ssh.exec(["sleep", "10"], timeout=0.5)
        assert time.monotonic() - started < 3
        assert ssh.exec(["true"])[0] == 0  # the connection is still usable


def test_jump_host(sshd, tmp_path: Path, device):
    # the server is its own jump host: the target is reached through a direct-tcpip channel
    jump = replace(device, name=f"{sshd.user}@127.0.0.1:{sshd.port}")
    via = replace(device, jump=jump)
    with SshTransport(via) as ssh:
        assert ssh.exec(["echo", "through"])[1] == "through\n"
        assert len(ssh._jumps) == 1
        assert isinstance(ssh._client.get_transport().sock, paramiko.Channel)  # tunnelled, not a socket


def test_workdir_tilde_is_the_device_home(sshd, tmp_path: Path):
    device = sshd.device(tmp_path, workdir="~/.edgekit-test")
    with SshTransport(device) as ssh:
        home = ssh.exec(["sh", "-c", 'echo "$HOME"'])[1].strip()
        assert ssh.workdir == f"{home.rstrip('/')}/.edgekit-test"


def test_facts(device):
    with SshTransport(device) as ssh:
        facts = ssh.facts()
        workdir = ssh.workdir
    assert facts["facts_source"] == "agent"
    assert facts["python"] == ".".join(map(str, sys.version_info[:3]))
    assert isinstance(facts["cpu_count"], int) and facts["hostname"]
    assert "onnxruntime" in facts["engines"] and facts["engine_packages.onnxruntime"] is True
    assert facts["disk.path"] == workdir and facts["disk.free_bytes"] > 0


def fake_python(tmp_path: Path, facts_script: str) -> Path:
    """An interpreter that answers `--facts` with `facts_script` and runs everything else normally."""
    path = tmp_path / "fake-python"
    path.write_text(
        '#!/bin/sh\nfor a in "$@"; do if [ "$a" = "--facts" ]; then\n'
        f'{facts_script}\nfi; done\nexec {sys.executable} "$@"\n'
    )
    path.chmod(0o755)
    return path


def test_facts_fall_back_when_the_agent_cannot_say(sshd, tmp_path: Path):
    python = fake_python(tmp_path, "echo 'edgekit-agent: error: unrecognized arguments: --facts' >&2; exit 2")
    with SshTransport(sshd.device(tmp_path, python=str(python))) as ssh:
        facts = ssh.facts()
    assert facts["facts_source"] == "fallback"
    assert facts["python"] == ".".join(map(str, sys.version_info[:3])) and facts["disk.free_bytes"] > 0


def test_hostile_device_facts_are_cleaned(sshd, tmp_path: Path):
    hostile = {
        "schema": "edgekit.facts",
        "version": 1,
        "device": {"python": "3" * 10_000, "hostname": ["not", "a", "string"], "cpu_count": 1e400},
        "evil": {"nested": {"deeper": 1}, "ok": True},
        **{f"k{i}": i for i in range(500)},
    }
    (tmp_path / "hostile.json").write_text(json.dumps(hostile))
    python = fake_python(tmp_path, f"cat {tmp_path / 'hostile.json'}; exit 0")
    with SshTransport(sshd.device(tmp_path, python=str(python))) as ssh:
        facts = ssh.facts()
    assert len(facts) <= 65 and facts["facts_source"] == "agent"
    assert facts["python"] == "3" * 512 and facts["hostname"] == ["not", "a", "string"]
    assert facts["cpu_count"] is None and facts["evil.ok"] is True and "evil.nested" not in facts


def test_hostile_facts_are_cleaned():
    hostile = {
        "python": "3.11",
        "x" * 100: "long key dropped",
        "cpu": "y" * 10_000,
        "nan": float("nan"),
        "nested": {"a": 1, "deeper": {"b": 2}},
        "list": [1, "two", {"three": 3}] * 50,
        **{f"k{i}": i for i in range(200)},
    }
    clean = clean_facts(hostile)
    assert len(clean) == 64
    assert clean["python"] == "3.11" and len(clean["cpu"]) == 512 and clean["nan"] is None
    assert clean["nested.a"] == 1 and "nested.deeper" not in clean
    assert len(clean["list"]) == 22  # 32 entries, of which the dicts are dropped
    assert all(len(key) <= 64 for key in clean)


def test_round_trip_on_loopback(device, capsys):
    with SshTransport(device) as ssh:
        ssh.exec(["true"])
        times = []
        for _ in range(30):
            started = time.perf_counter()
            ssh.exec(["true"])
            times.append(time.perf_counter() - started)
    median_ms = statistics.median(times) * 1000
    with capsys.disabled():
        print(f"\nSSH command round trip on loopback (TCP_NODELAY): median {median_ms:.1f} ms over 30")
    assert median_ms < 100


@contextlib.contextmanager
def silent_server():
    """A port that accepts TCP connections and never says a word: a frozen sshd."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])  # accepted, never answered
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield silent.getsockname()[1]
    finally:
        stop.set()
        silent.close()
        for connection in held:
            connection.close()


def test_a_server_that_accepts_but_sends_no_banner_is_named_as_such(sshd, tmp_path):
    with silent_server() as port:
        device = sshd.device(tmp_path, port=port)
        started = time.monotonic()
        with pytest.raises(DeviceError, match="accepted the connection but sent no banner within 1 s"):
            SshTransport(device, connect_timeout=1.0, retries=0).connect()
        assert time.monotonic() - started < 5


def test_connect_timeout_and_retries_from_the_fleet_file(sshd, tmp_path):
    with silent_server() as port:
        fleet = tmp_path / "fleet.toml"
        fleet.write_text(
            f'[defaults]\nconnect_timeout = 1\n\n[[device]]\nname = "frozen"\nhost = "127.0.0.1"\nport = {port}\n'
            f'key = "{sshd.client_key}"\nconnect_retries = 1\n'
        )
        [device] = load_fleet(fleet, ssh_config=None)
        assert (device.connect_timeout, device.connect_retries) == (1.0, 1)
        started = time.monotonic()
        with pytest.raises(DeviceError) as failure:
            SshTransport(device).connect()
        took = time.monotonic() - started
    message = str(failure.value)
    assert "accepted the connection but sent no banner within 1 s" in message
    assert "raise `connect_timeout` in the fleet file" in message and "(2 tries; `connect_retries`" in message
    assert 1.9 < took < 3.0, took  # two tries of 1 s, no pause after a try that waited out its timeout
