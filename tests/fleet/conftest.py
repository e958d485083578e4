"""A real OpenSSH server on 127.0.0.1 for the fleet tests: its own config, host key and client key.

The "device" is this machine, reached over SSH as the current user; its Python is the one running the
tests (it has numpy, OpenCV and onnxruntime), and each test gets its own work folder and known_hosts.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netns import keygen

from edgekit.fleet.inventory import Device

SSHD = Path("/usr/sbin/sshd")


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str
    client_key: Path  # authorized on the server
    other_key: Path  # a valid key the server does not accept
    host_key_line: str  # "ssh-ed25519 AAAA..." of the server
    other_host_key_line: str  # a different ed25519 public key, for a "changed key" known_hosts
    log: Path

    def known_hosts_entry(self, key_line: str | None = None) -> str:
        return f"[{self.host}]:{self.port} {key_line or self.host_key_line}\n"

    def device(self, tmp_path: Path, **overrides) -> Device:
        """A device for this server with a known_hosts that trusts it and a fresh work folder."""
        known_hosts = tmp_path / "known_hosts"
        if not known_hosts.exists():
            known_hosts.write_text(self.known_hosts_entry())
        settings = {
            "name": "loopback",
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "key": self.client_key,
            "target": "x86-ort",
            "tags": ("test",),
            "workdir": str(tmp_path / "device-workdir"),
            "python": sys.executable,
            "known_hosts": known_hosts,
            **overrides,
        }
        return Device(**settings)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_banner(port: int, process: subprocess.Popen, log: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with code {process.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            if sock.recv(64).startswith(b"SSH-"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not accept connections on port {port} within {timeout} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    if not SSHD.is_file():
        pytest.skip("OpenSSH server not installed (apt-get install -y openssh-server)")
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen not installed (apt-get install -y openssh-client)")
    root = tmp_path_factory.mktemp("sshd")
    host_key_line = keygen(root / "host_ed25519")
    other_host_key_line = keygen(root / "other_host_ed25519")
    client_line = keygen(root / "client_ed25519")
    keygen(root / "stranger_ed25519")
    (root / "authorized_keys").write_text(client_line + "\n")
    port = _free_port()
    config = root / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {root / 'host_ed25519'}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
        "UsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\n"
        "Subsystem sftp internal-sftp\nSetEnv SHLVL=5\nMaxSessions 64\nMaxStartups 64\nLogLevel ERROR\n"
    )
    with contextlib.suppress(OSError):
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    log = root / "sshd.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)], stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_banner(port, process, log)
        yield SshServer(
            host="127.0.0.1",
            port=port,
            user=getpass.getuser(),
            client_key=root / "client_ed25519",
            other_key=root / "stranger_ed25519",
            host_key_line=host_key_line,
            other_host_key_line=other_host_key_line,
            log=log,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def device(sshd: SshServer, tmp_path: Path) -> Device:
    return sshd.device(tmp_path)


@pytest.fixture
def processes_mentioning():
    """Command lines of this machine's processes that contain a text (the device is this machine)."""
    return _processes_mentioning


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


@pytest.fixture(scope="session")
def digits_artifact(tmp_path_factory: pytest.TempPathFactory):
    """The demo's x86-ort artifact, built from the embedded digits model."""
    from edgekit.api import build
    from edgekit.demo_data import digits_model_path

    return build(digits_model_path(), "x86-ort", tmp_path_factory.mktemp("artifact") / "digits-x86-ort")


@pytest.fixture(scope="session")
def digits_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """A 40-frame video of real held-out digits and their labels."""
    from edgekit.demo_data import load_heldout_digits, render_digits_video

    images, labels = load_heldout_digits()
    video = render_digits_video(images[:40], labels[:40], tmp_path_factory.mktemp("video") / "digits.mp4")
    return video, [int(v) for v in labels[:40]]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_fleet(path: Path, sshd: SshServer, tmp_path: Path) -> None:
    """A fleet file: box-a and box-b on the test sshd, and "gone" on a closed port, all tagged "lab"."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts_entry())
    entries = []
    for name, port in (("box-a", sshd.port), ("box-b", sshd.port), ("gone", _closed_port())):
        entries.append(
            f'[[device]]\nname = "{name}"\nhost = "{sshd.host}"\nport = {port}\nuser = "{sshd.user}"\n'
            f'key = "{sshd.client_key}"\nknown_hosts = "{known_hosts}"\nworkdir = "{tmp_path / name}"\n'
            f'python = "{sys.executable}"\ntarget = "x86-ort"\ntags = ["lab"]\n'
        )
    path.write_text("\n".join(entries))


@pytest.fixture
def write_fleet():
    """`write_fleet(path, sshd, tmp_path)`: a three-device fleet file (one unreachable)."""
    return _write_fleet


_ARM64_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "arm64_device.py"


def _arm64_script():
    """scripts/arm64_device.py as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("arm64_device", _ARM64_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("arm64_device", module)
    spec.loader.exec_module(module)
    return sys.modules["arm64_device"]


@pytest.fixture
def arm64_script():
    """scripts/arm64_device.py as a module, for tests of its parts that need no device."""
    return _arm64_script()


def _reaches(host: str, port: int = 80) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=5):
        return True
    return False


@dataclass(frozen=True)
class Arm64Server:
    """The emulated aarch64 device (scripts/arm64_device.py): its own sshd on loopback, root inside it."""

    facts: object  # arm64_device.Arm64Device
    qemu_version: tuple[int, ...]

    def device(self, tmp_path: Path, **overrides) -> Device:
        settings = {
            "name": "arm64",
            "host": self.facts.host,
            "port": self.facts.port,
            "user": self.facts.user,
            "key": Path(self.facts.client_key),
            "target": "android-tflite",
            "tags": ("arm64",),
            "workdir": self.facts.workdir,  # a tmpfs of the device: pushes are shared by the session's tests
            "python": self.facts.python,
            "known_hosts": Path(self.facts.known_hosts),
            **overrides,
        }
        return Device(**settings)

    def fleet_entry(self, name: str = "arm64", cpu: str | None = None) -> str:
        """A fleet file entry; `cpu` (a qemu CPU model, e.g. "max") runs the agent on that CPU instead."""
        python = f"/usr/bin/env QEMU_CPU={cpu} {self.facts.python}" if cpu else self.facts.python
        return (
            f'[[device]]\nname = "{name}"\nhost = "{self.facts.host}"\nport = {self.facts.port}\n'
            f'user = "{self.facts.user}"\nkey = "{self.facts.client_key}"\nknown_hosts = "{self.facts.known_hosts}"\n'
            f'workdir = "{self.facts.workdir}"\npython = "{python}"\ntarget = "android-tflite"\n'
            'tags = ["arm64"]\n'
        )


@pytest.fixture(scope="session")
def arm64(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arm64Server]:
    """An aarch64 Debian under qemu-user with its own sshd, started once per session. Builds the cached root
    filesystem when missing (minutes; .ci/run builds it before the tests); skips only where this machine
    cannot run aarch64 programs (no root, no binfmt_misc) or cannot download the root filesystem."""
    script = _arm64_script()
    try:
        script.prepare_host()
    except script.Unavailable as exc:
        pytest.skip(f"no emulated ARM64 device: {exc}")
    if not script.rootfs_ready(script.default_rootfs()) and not _reaches("deb.debian.org"):
        pytest.skip(
            f"the aarch64 root filesystem is not built ({script.default_rootfs()}) and deb.debian.org cannot be "
            "reached to build it: run scripts/arm64_device.py build where it can"
        )
    script.build_rootfs()
    state = tmp_path_factory.mktemp("arm64-device")
    facts = script.start(state, owner=os.getpid())  # a later session stops it if this one is killed
    try:
        yield Arm64Server(facts, script.qemu_version())
    finally:
        script.stop(state)
