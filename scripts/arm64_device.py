"""An emulated ARM64 device: an aarch64 Debian root filesystem run through qemu-user, reached over SSH.

The root filesystem (Debian bookworm for arm64, made by ``debootstrap``) holds python3, an sshd and a venv
with the agent's dependencies as aarch64 wheels from PyPI (numpy, opencv-python-headless, onnxruntime,
ai-edge-litert). It is cached outside the clone (``~/.cache/edgekit/arm64-rootfs``, or
``$EDGEKIT_ARM64_ROOTFS``) with a stamp of the recipe below: a changed recipe rebuilds it.

A started device is the rootfs's own (aarch64) sshd on a loopback port, inside a private mount namespace
(``unshare --mount``) that holds its /proc, /sys, /dev, a tmpfs /tmp and /run, and an ARM /proc/cpuinfo:
ONNX Runtime's import crashes and XNNPACK fails at start-up while the guest reads the host's x86 one.
Nothing is mounted in this machine's namespace, so a device that dies leaves no mounts; ``stop`` kills
every process of the device's namespace. Its host key, client key and config live in a state folder
that is bind-mounted at /run/edgekit inside the device.

Needs root (debootstrap, chroot, mounts) and the kernel's binfmt_misc; installs qemu-user-static and
debootstrap with apt-get when they are missing, and registers qemu's aarch64 handler with the F flag (the
interpreter is opened at registration, so it works inside the chroot).

    python3 scripts/arm64_device.py build                 # build (or reuse) the rootfs; prints its path
    python3 scripts/arm64_device.py start --state /tmp/arm64   # prints host, port, key, known_hosts line
    ssh -i /tmp/arm64/client_ed25519 -o UserKnownHostsFile=/tmp/arm64/known_hosts -p PORT root@127.0.0.1 uname -m
    python3 scripts/arm64_device.py stop --state /tmp/arm64

Only the standard library: the test fixtures import it (tests/fleet/conftest.py).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DEB_PACKAGES = ("python3", "python3-venv", "openssh-server")
PYTHON_VERSION = "3.11"  # bookworm's python3
# The agent's dependencies, pinned to what the host's .venv runs so that x86 and aarch64 compare like for like.
WHEELS = ("numpy==2.4.6", "opencv-python-headless==5.1.0.95", "onnxruntime==1.32.0", "ai-edge-litert==2.3.0")
VENV = "/opt/edgekit-venv"
DEVICE_PYTHON = f"{VENV}/bin/python"
RECIPE_VERSION = 1  # raise when the build steps change in a way the lists above do not show

BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
SSHD = "/usr/sbin/sshd"
STAMP = ".edgekit-recipe"
DEFAULT_STATE = Path("/tmp/edgekit-arm64")


@dataclass(frozen=True)
class CpuModel:
    """An ARM CPU as the guest sees it: qemu's model (QEMU_CPU) and the /proc/cpuinfo that describes it."""

    qemu: str  # qemu-aarch64 -cpu NAME
    part: str  # MIDR part number
    variant: str
    revision: int
    features: str


_V8_2 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
CPU_MODELS = {
    # The default: qemu's Cortex-A76 (Armv8.2 with dotprod, as in Snapdragon 855/865 or a Raspberry Pi 5).
    "cortex-a76": CpuModel("cortex-a76", "0xd0b", "0x4", 1, _V8_2 + " ssbs"),
    "neoverse-n1": CpuModel("neoverse-n1", "0xd0c", "0x3", 1, _V8_2 + " ssbs"),
    "cortex-a72": CpuModel("cortex-a72", "0xd08", "0x0", 2, "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
    "cortex-a53": CpuModel("cortex-a53", "0xd03", "0x0", 4, "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
    # Every feature qemu implements (SVE, SVE2, SME, i8mm, bf16 ...) under issue 17's Cortex-A78 cpuinfo. Under
    # qemu 7.2 XNNPACK's INT8 GEMMs are wrong here: it picks SME kernels, and 7.2 emulates SME wrongly.
    "max": CpuModel("max", "0xd41", "0x1", 1, _V8_2 + " ssbs"),
}
DEFAULT_CPU = "cortex-a76"


def default_rootfs() -> Path:
    return Path(os.environ.get("EDGEKIT_ARM64_ROOTFS", "~/.cache/edgekit/arm64-rootfs")).expanduser()


def recipe() -> dict:
    return {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "packages": list(DEB_PACKAGES),
        "python": PYTHON_VERSION,
        "wheels": list(WHEELS),
    }


def recipe_stamp() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:16]


def log(message: str) -> None:
    print(f"[arm64] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- host set-up


class Unavailable(RuntimeError):
    """This machine cannot run the emulated device; the message says what is missing."""


def ensure_tools() -> None:
    """qemu-user-static and debootstrap, installed with apt-get where missing."""
    missing = [
        package
        for package, path in (
            ("qemu-user-static", "/usr/bin/qemu-aarch64-static"),
            ("debootstrap", "/usr/sbin/debootstrap"),
        )
        if not Path(path).exists()
    ]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable(
            f"{', '.join(missing)} not installed (apt-get install -y {' '.join(missing)}) and no root apt-get here"
        )
    log(f"installing {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, env=env)
    if done.returncode == 0:
        done = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise Unavailable(f"apt-get install {' '.join(missing)} failed: {done.stderr.strip()[-500:]}")


def _binfmt_line() -> str:
    """qemu-user-static's aarch64 registration, with the F flag (interpreter opened now, usable in a chroot)."""
    if not BINFMT_CONF.is_file():
        raise Unavailable(f"{BINFMT_CONF} missing (apt-get install -y qemu-user-static)")
    line = next(text for text in BINFMT_CONF.read_text().splitlines() if text.startswith(":"))
    head, flags = line.rsplit(":", 1)
    return f"{head}:{''.join(sorted(set(flags) | {'F'}))}"


def register_binfmt() -> None:
    """The kernel runs aarch64 ELF files through qemu-aarch64-static (mounts binfmt_misc if needed)."""
    if not (BINFMT_DIR / "register").exists():
        done = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise Unavailable(f"cannot mount binfmt_misc at {BINFMT_DIR}: {done.stderr.strip()}")
    entry = BINFMT_DIR / "qemu-aarch64"
    if entry.exists():
        text = entry.read_text()
        flags = next((line.split()[1] for line in text.splitlines() if line.startswith("flags:")), "")
        if text.startswith("enabled") and "F" in flags:
            return
        entry.write_text("-1")  # registered without F (or disabled): replace it
    try:
        (BINFMT_DIR / "register").write_text(_binfmt_line())
    except OSError as exc:
        raise Unavailable(f"cannot register the aarch64 binfmt handler: {exc}") from exc


def qemu_version() -> tuple[int, ...]:
    """The version of the qemu that runs aarch64 programs here (the registered binfmt interpreter)."""
    interpreter = "/usr/bin/qemu-aarch64-static"
    entry = BINFMT_DIR / "qemu-aarch64"
    if entry.exists():
        interpreter = next(
            (line.split()[1] for line in entry.read_text().splitlines() if line.startswith("interpreter")), interpreter
        )
    # the registered name may be a wrapper that runs only under binfmt_misc: ask the binary it points to
    shown = subprocess.run([os.path.realpath(interpreter), "--version"], capture_output=True, text=True).stdout
    words = shown.split()
    version = words[words.index("version") + 1] if "version" in words else "0"
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def prepare_host() -> None:
    if os.geteuid() != 0:
        raise Unavailable("the emulated ARM64 device needs root (debootstrap, chroot, mounts, binfmt_misc)")
    ensure_tools()
    register_binfmt()


# ---------------------------------------------------------------------------------------------- root filesystem


def rootfs_ready(rootfs: Path) -> bool:
    stamp = rootfs / STAMP
    return stamp.is_file() and stamp.read_text().split("\n", 1)[0] == recipe_stamp()


def _run(command: list[str], what: str, **kwargs) -> None:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")


def _processes_rooted_in(rootfs: Path) -> list[int]:
    """Processes whose root directory is `rootfs` (a running device)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "root") == str(rootfs):
                    found.append(int(entry.name))
    return found


def _debootstrap(target: Path) -> None:
    log(f"debootstrap --arch=arm64 {SUITE} (emulated dpkg: minutes)")
    _run(
        # in a mount namespace of its own: the /proc and /sys it mounts in the target go with it, even when killed
        [
            "unshare",
            "--mount",
            "--",
            "nice",
            "debootstrap",
            "--arch=arm64",
            "--variant=minbase",
            f"--include={','.join(DEB_PACKAGES)}",
            SUITE,
            str(target),
            MIRROR,
        ],
        "debootstrap",
    )


def _pip_platforms() -> list[str]:
    """manylinux tags bookworm's glibc (2.36) accepts: pip does not widen --platform by itself."""
    tags = ["--platform", "manylinux2014_aarch64"]
    for minor in range(17, 37):
        tags += ["--platform", f"manylinux_2_{minor}_aarch64"]
    return tags


def _install_wheels(target: Path) -> None:
    """The venv is made by the guest's python; its packages are installed by this machine's pip (native speed)."""
    log(f"venv {VENV} and wheels {' '.join(WHEELS)}")
    _run(["chroot", str(target), "python3", "-m", "venv", "--without-pip", VENV], "python3 -m venv (in the rootfs)")
    site = target / VENV.lstrip("/") / "lib" / f"python{PYTHON_VERSION}" / "site-packages"
    abi = "cp" + PYTHON_VERSION.replace(".", "")
    if importlib.util.find_spec("pip") is None:
        raise RuntimeError(f"{sys.executable} has no pip: run this script with one that has (e.g. .venv/bin/python)")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            *_pip_platforms(),
            "--python-version",
            PYTHON_VERSION,
            "--implementation",
            "cp",
            "--abi",
            abi,
            "--abi",
            "abi3",
            "--abi",
            "none",
            "--target",
            str(site),
            *WHEELS,
        ],
        "pip install (aarch64 wheels)",
    )


def _remove_tree(path: Path) -> None:
    """rm -rf `path`, never through a mount below it (a /dev bound there would lose this machine's nodes)."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    below = [m for m in mounts if m == str(path) or m.startswith(f"{path}/")]
    if below:
        raise RuntimeError(f"{path} has mounts below it ({', '.join(below)}): unmount them first")
    shutil.rmtree(path, ignore_errors=True)


def build_rootfs(rootfs: Path | None = None, *, force: bool = False) -> Path:
    """The cached rootfs, built when missing or made by another recipe. Safe against concurrent callers."""
    rootfs = (rootfs or default_rootfs()).resolve()
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    with open(rootfs.parent / f"{rootfs.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if rootfs_ready(rootfs) and not force:
            return rootfs
        prepare_host()
        if rootfs.exists():
            if _processes_rooted_in(rootfs):
                raise RuntimeError(f"{rootfs} is out of date but a device runs on it: stop it first")
            _remove_tree(rootfs)
        staging = rootfs.with_name(rootfs.name + ".building")
        _remove_tree(staging)
        started = time.monotonic()
        _debootstrap(staging)
        _install_wheels(staging)
        for cached in (staging / "var/cache/apt/archives").glob("*.deb"):
            cached.unlink()
        (staging / STAMP).write_text(f"{recipe_stamp()}\n{json.dumps(recipe(), indent=1)}\n")
        staging.rename(rootfs)
        log(f"built {rootfs} in {time.monotonic() - started:.0f} s")
    return rootfs


# ---------------------------------------------------------------------------------------------- the device


@dataclass(frozen=True)
class Arm64Device:
    """A started device: how to reach it, and what `stop` needs."""

    host: str
    port: int
    user: str
    client_key: str  # authorized on the device
    host_key_line: str  # "ssh-ed25519 AAAA..."
    known_hosts: str  # a file holding known_hosts_line
    known_hosts_line: str
    python: str  # the agent's interpreter on the device
    workdir: str
    cpu: str
    rootfs: str
    state: str
    pid: int  # sshd (under qemu), the first process of the device's mount namespace
    mount_ns: str  # "mnt:[inode]": every process of the device has it


def cpuinfo_text(model: CpuModel, processors: int) -> str:
    block = (
        "processor\t: {n}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n"
    )
    fields = {"features": model.features, "variant": model.variant, "part": model.part, "revision": model.revision}
    return "\n".join(block.format(n=n, **fields) for n in range(processors)) + "\n"


def _keygen(path: Path) -> str:
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgekit-arm64", "-f", str(path)], "ssh-keygen")
    kind, data, *_ = path.with_suffix(".pub").read_text().split()
    return f"{kind} {data}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sshd_config(port: int, cpu: CpuModel) -> str:
    # QEMU_CPU reaches every process a session starts: each exec is a new qemu that reads it.
    return (
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey /run/edgekit/host_ed25519\nPidFile /run/edgekit/sshd.pid\n"
        "AuthorizedKeysFile /run/edgekit/authorized_keys\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
        "AllowTcpForwarding yes\nSubsystem sftp internal-sftp\nMaxSessions 64\nMaxStartups 64\nLogLevel ERROR\n"
        f"SetEnv SHLVL=5 QEMU_CPU={cpu.qemu}\n"
    )


# Runs as root in the device's new mount namespace, then becomes the aarch64 sshd (same pid).
_ENTER = """set -e
R="$1"; S="$2"; shift 2
mount --make-rprivate /
mount -t proc proc "$R/proc"
mount --bind "$S/cpuinfo" "$R/proc/cpuinfo"
mount -t sysfs sysfs "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mkdir -p "$R/run/edgekit" "$R/run/sshd"
mount --bind "$S" "$R/run/edgekit"
exec chroot "$R" "$@"
"""


def _wait_for_banner(port: int, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the device's sshd exited with code {process.returncode}: {log_path.read_text()[-2000:]}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            if sock.recv(64).startswith(b"SSH-"):
                return
        time.sleep(0.1)
    raise RuntimeError(
        f"the device's sshd did not answer on port {port} within {timeout:.0f} s: {log_path.read_text()[-2000:]}"
    )


def _write_state_files(state: Path, port: int, cpu: CpuModel) -> tuple[str, str]:
    """Keys, config and cpuinfo of one device; returns (host key line, known_hosts line)."""
    state.mkdir(parents=True, exist_ok=True)
    host_key_line = _keygen(state / "host_ed25519")
    client_line = _keygen(state / "client_ed25519")
    (state / "authorized_keys").write_text(client_line + "\n")
    (state / "sshd_config").write_text(_sshd_config(port, cpu))
    (state / "cpuinfo").write_text(cpuinfo_text(cpu, os.cpu_count() or 1))
    known_hosts_line = f"[127.0.0.1]:{port} {host_key_line}"
    (state / "known_hosts").write_text(known_hosts_line + "\n")
    return host_key_line, known_hosts_line


OWNER_ENV = "EDGEKIT_ARM64_OWNER"  # the pid whose device this is (a test session): gone, the device is an orphan


def start(
    state: Path,
    *,
    rootfs: Path | None = None,
    cpu: str = DEFAULT_CPU,
    port: int | None = None,
    timeout: float = 60.0,
    owner: int | None = None,
) -> Arm64Device:
    """Start the device (the rootfs must be built); its facts are also written to `state`/device.json. With an
    `owner` pid (a test session's), a later start stops the device once that process is gone (a test run that
    was killed cannot stop its own device); without one (by hand) it runs until `stop`."""
    rootfs = (rootfs or default_rootfs()).resolve()
    if not rootfs_ready(rootfs):
        raise RuntimeError(f"{rootfs} is not built for this recipe: run `{Path(__file__).name} build` first")
    prepare_host()
    state = state.resolve()
    stop(state)  # an earlier device of this state folder
    stop_orphans(rootfs)
    port = port or _free_port()
    host_key_line, known_hosts_line = _write_state_files(state, port, CPU_MODELS[cpu])
    log_path = state / "sshd.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--",
                "sh",
                "-c",
                _ENTER,
                "enter",
                str(rootfs),
                str(state),
                SSHD,
                "-D",
                "-e",
                "-f",
                "/run/edgekit/sshd_config",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, OWNER_ENV: str(owner)} if owner else None,
        )
    try:
        _wait_for_banner(port, process, log_path, timeout)
        device = Arm64Device(
            host="127.0.0.1",
            port=port,
            user="root",
            client_key=str(state / "client_ed25519"),
            host_key_line=host_key_line,
            known_hosts=str(state / "known_hosts"),
            known_hosts_line=known_hosts_line,
            python=DEVICE_PYTHON,
            workdir="/tmp/edgekit",
            cpu=cpu,
            rootfs=str(rootfs),
            state=str(state),
            pid=process.pid,
            mount_ns=os.readlink(f"/proc/{process.pid}/ns/mnt"),
        )
    except BaseException:
        _kill_namespace(process.pid, os.readlink(f"/proc/{process.pid}/ns/mnt") if process.poll() is None else "")
        raise
    (state / "device.json").write_text(json.dumps(asdict(device), indent=1) + "\n")
    return device


def run_in_device(
    command: list[str], *, rootfs: Path | None = None, cpu: str = DEFAULT_CPU, state: Path | None = None
) -> int:
    """Run one command as root in the device's surroundings (ARM cpuinfo, QEMU_CPU, private mounts), with no
    sshd: for experiments and by-hand checks. `state`/… is /run/edgekit inside. Returns its exit status."""
    import tempfile

    rootfs = (rootfs or default_rootfs()).resolve()
    if not rootfs_ready(rootfs):
        raise RuntimeError(f"{rootfs} is not built for this recipe: run `{Path(__file__).name} build` first")
    prepare_host()
    with tempfile.TemporaryDirectory(prefix="edgekit-arm64-") as scratch:
        state = (state or Path(scratch)).resolve()
        state.mkdir(parents=True, exist_ok=True)
        (state / "cpuinfo").write_text(cpuinfo_text(CPU_MODELS[cpu], os.cpu_count() or 1))
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": "/root",
            "QEMU_CPU": CPU_MODELS[cpu].qemu,
        }
        return subprocess.run(
            ["unshare", "--mount", "--", "sh", "-c", _ENTER, "enter", str(rootfs), str(state), *command], env=env
        ).returncode


def _namespace_members(mount_ns: str) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "mnt") == mount_ns:
                    members.append(int(entry.name))
    return members


def _kill_namespace(pid: int, mount_ns: str, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process in the device's mount namespace; the namespace (and every mount
    in it) goes with its last process."""
    own = os.readlink("/proc/self/ns/mnt")
    members = set(_namespace_members(mount_ns)) if mount_ns and mount_ns != own else set()
    members.add(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for member in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(-1, os.WNOHANG)  # reap our own sshd
            members = {m for m in members if Path(f"/proc/{m}").exists() and _state_of(m) != "Z"}
            if not members:
                return
            time.sleep(0.05)


def _state_of(pid: int) -> str:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    return ""


def stop_orphans(rootfs: Path) -> list[int]:
    """Stop the devices on `rootfs` whose owner process is gone; the pids of the sshds stopped."""
    stopped, namespaces = [], set()
    for pid in _processes_rooted_in(rootfs.resolve()):
        owner = _owner_of(pid)
        if owner is None or Path(f"/proc/{owner}").exists():
            continue
        with contextlib.suppress(OSError):
            namespace = os.readlink(f"/proc/{pid}/ns/mnt")
            if namespace not in namespaces:  # one sweep per device: every process of it goes at once
                namespaces.add(namespace)
                _kill_namespace(pid, namespace)
                stopped.append(pid)
    return stopped


def _owner_of(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if item.startswith(OWNER_ENV.encode() + b"="):
                return int(item.split(b"=", 1)[1])
    return None


def stop(state: Path) -> bool:
    """Stop the device started with this state folder; False when none was running."""
    facts = state / "device.json"
    if not facts.is_file():
        return False
    device = json.loads(facts.read_text())
    facts.unlink()
    running = Path(f"/proc/{device['pid']}").exists()
    with contextlib.suppress(OSError):
        running = running and os.readlink(f"/proc/{device['pid']}/ns/mnt") == device["mount_ns"]
    if running:
        _kill_namespace(device["pid"], device["mount_ns"])
    return running


# ---------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("command", choices=("build", "start", "stop", "check", "exec"))
    parser.add_argument("--rootfs", type=Path, default=None, help="root filesystem folder (default %(default)s)")
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        help="start/stop: the device's keys and config (default /tmp/edgekit-arm64); exec: files to see at "
        "/run/edgekit (default: an empty temporary folder)",
    )
    parser.add_argument("--cpu", choices=sorted(CPU_MODELS), default=DEFAULT_CPU)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--force", action="store_true", help="build: rebuild even when the cache is current")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[argv.index("--") + 1 :] if "--" in argv else []  # exec: what to run inside the device
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        if args.command == "check":
            prepare_host()
            print(
                f"binfmt registered; rootfs {'ready' if rootfs_ready(args.rootfs or default_rootfs()) else 'not built'}"
            )
        elif args.command == "build":
            started = time.monotonic()
            print(build_rootfs(args.rootfs, force=args.force))
            log(f"build step took {time.monotonic() - started:.1f} s")
        elif args.command == "start":
            started = time.monotonic()
            device = start(args.state or DEFAULT_STATE, rootfs=args.rootfs, cpu=args.cpu, port=args.port)
            print(json.dumps(asdict(device), indent=1))
            log(f"started in {time.monotonic() - started:.1f} s")
        elif args.command == "exec":
            return run_in_device(command or ["/bin/sh"], rootfs=args.rootfs, cpu=args.cpu, state=args.state)
        else:
            print("stopped" if stop(args.state or DEFAULT_STATE) else "no device was running")
    except Unavailable as exc:
        print(f"unavailable: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
