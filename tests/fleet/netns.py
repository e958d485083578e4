"""Devices made of Linux network namespaces: each has a veth link to this machine and its own sshd.

    with netns_fleet([NsSpec("healthy"), NsSpec("weak", cpu_quota=0.25)], tmp_path) as fleet:
        fleet.write_fleet(tmp_path / "fleet.toml")
        ...

Each device gets a namespace `ek-p<pid>r<hex>-<i>` (unique per run; the pid says whose it is), a veth
pair (`ekh<hex><i>` on this side), a private /30 out of 10.231.0.0/16 that no interface here uses yet,
its own host key, and `sshd -D` on port 22 inside the namespace. Traffic to a device only ever crosses
its veth link, which exists only inside this machine. Per device:

- `cpu_quota`: a fraction of one CPU for the device's sshd and everything it starts (the agent):
  a cgroup v1 `cpu.cfs_quota_us`, else a cgroup v2 `cpu.max`, else `taskset -c 0` (one core, no quota);
  `NsDevice.weak_by` says which was used;
- `rate`: a token bucket (`tc ... tbf rate RATE burst 32kbit latency 400ms`) on the host side of the
  link, so everything pushed to the device is shaped;
- `workdir_size`: a tmpfs of that size mounted at the device's work folder (a nearly full disk);
- `wrong_host_key`: the fleet's known_hosts holds another key for this device (its key "changed").

On exit (also after a failure) every process in the namespaces is killed, the tmpfs mounts, the
namespaces, veths and cgroups are removed. Leftovers of an earlier run of this helper whose process is
gone are removed first.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
SUBNET = ipaddress.ip_network("10.231.0.0/16")
_NS_NAME = re.compile(r"^ek-p(\d+)r([0-9a-f]+)-\d+$")
_PERIOD_US = 100_000


@dataclass(frozen=True)
class NsSpec:
    """One device to make. `name` is the device's name in the fleet file."""

    name: str
    cpu_quota: float | None = None  # fraction of one CPU, e.g. 0.25
    rate: str | None = None  # tc rate, e.g. "1mbit"
    workdir_size: str | None = None  # tmpfs size, e.g. "128k"
    wrong_host_key: bool = False
    tags: tuple[str, ...] = ()


@dataclass
class NsDevice:
    spec: NsSpec
    index: int
    netns: str
    host_veth: str
    host_address: str  # this machine's end of the link
    address: str  # the device's end: sshd listens here
    port: int
    workdir: Path
    host_key_line: str
    log: Path
    process: subprocess.Popen | None = None
    weak_by: str | None = None  # "cgroup v1 cpu.cfs_quota_us 25000/100000", "taskset -c 0", ...
    cgroup: Path | None = None
    mounted: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    def pids(self) -> list[int]:
        """Every process inside the device's namespace."""
        found = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True)
        return [int(p) for p in found.stdout.split()] if found.returncode == 0 else []

    def processes(self) -> dict[int, str]:
        """pid -> command line, of the processes inside the namespace."""
        lines = {}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                lines[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        return lines

    def kill_all(self, sig: int = signal.SIGKILL) -> list[int]:
        """Kill everything in the namespace (sshd, sessions, the agent): the device "dies"."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids


@dataclass
class NetnsFleet:
    run_id: str
    root: Path
    devices: list[NsDevice]
    client_key: Path
    known_hosts: Path
    user: str = "root"
    python: str = sys.executable
    _by_name: dict[str, NsDevice] = field(default_factory=dict)

    def __getitem__(self, name: str) -> NsDevice:
        return self._by_name[name]

    def write_fleet(self, path: Path, names: Sequence[str] | None = None, *, target: str = "x86-ort") -> Path:
        """Write an edgekit fleet file (TOML) for the devices (all, or those named)."""
        chosen = [d for d in self.devices if names is None or d.name in names]
        blocks = []
        for d in chosen:
            tags = ", ".join(json.dumps(t) for t in (*d.spec.tags, "netns"))
            blocks.append(
                "[[device]]\n"
                f"name = {json.dumps(d.name)}\nhost = {json.dumps(d.address)}\nport = {d.port}\n"
                f"user = {json.dumps(self.user)}\nkey = {json.dumps(str(self.client_key))}\n"
                f"known_hosts = {json.dumps(str(self.known_hosts))}\nworkdir = {json.dumps(str(d.workdir))}\n"
                f"python = {json.dumps(self.python)}\ntarget = {json.dumps(target)}\ntags = [{tags}]\n"
            )
        path.write_text("\n".join(blocks))
        return path

    def edgekit_device(self, name: str):
        """The edgekit Device for one namespace device (as load_fleet would give it)."""
        from edgekit.fleet.inventory import Device

        d = self[name]
        return Device(
            name=d.name,
            host=d.address,
            port=d.port,
            user=self.user,
            key=self.client_key,
            target="x86-ort",
            tags=(*d.spec.tags, "netns"),
            workdir=str(d.workdir),
            python=self.python,
            known_hosts=self.known_hosts,
        )


# -- availability -----------------------------------------------------------------------------------


def unavailable_reason() -> str | None:
    """Why namespace devices cannot be made here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add, veth, tc, mount)"
    for tool in ("ip", "tc", "ssh-keygen", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool!r} is not installed (iproute2 / openssh-client / util-linux)"
    if not SSHD.is_file():
        return f"OpenSSH server not installed at {SSHD} (apt-get install -y openssh-server)"
    probe = f"ek-p{os.getpid()}rprobe-0"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip() or made.returncode}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


# -- cleanup of earlier runs --------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ns_pids(netns: str) -> list[int]:
    found = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()] if found.returncode == 0 else []


def _kill_namespace_processes(netns: str) -> None:
    for _ in range(50):
        pids = _ns_pids(netns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _mounts() -> list[tuple[str, str]]:
    """(filesystem type, mount point) of this machine's mounts."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                found.append((parts[2], parts[1].replace("\\040", " ")))
    return found


def _cpu_cgroup_v1() -> Path | None:
    for fstype, point in _mounts():
        if fstype == "cgroup" and (Path(point) / "cpu.cfs_quota_us").exists():
            return Path(point)
    return None


def _cgroup_v2() -> Path | None:
    for fstype, point in _mounts():
        controllers = Path(point) / "cgroup.controllers"
        if fstype == "cgroup2" and controllers.exists() and "cpu" in controllers.read_text().split():
            return Path(point)
    return None


def _host_veths(token: str) -> list[Path]:
    return list(Path("/sys/class/net").glob(f"ekh{token}*"))


def cleanup_stale() -> list[str]:
    """Remove namespaces, mounts and cgroups that an earlier run of this helper left behind (its process
    is gone). Returns what was removed."""
    removed = []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    stale_ids = set()
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NS_NAME.match(name)
        if match and not _alive(int(match.group(1))):
            stale_ids.add(match.group(2))
            _kill_namespace_processes(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            removed.append(f"netns {name}")
    for token in stale_ids:  # a deleted namespace takes its veth pair along, a moment later
        wait_until(lambda token=token: not _host_veths(token), timeout=2.0)
        for link in _host_veths(token):
            subprocess.run(["ip", "link", "del", link.name], capture_output=True)
            removed.append(f"veth {link.name}")
    for fstype, point in _mounts():
        match = re.search(r"/(ek-p(\d+)r[0-9a-f]+)/", point + "/")
        if fstype == "tmpfs" and match and not _alive(int(match.group(2))):
            subprocess.run(["umount", "-l", point], capture_output=True)
            removed.append(f"mount {point}")
    for base in (_cpu_cgroup_v1(), _cgroup_v2()):
        if base is None:
            continue
        for group in base.glob("ek-p*"):
            match = re.match(r"^ek-p(\d+)r", group.name)
            if match and not _alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    group.rmdir()
                    removed.append(f"cgroup {group}")
    return removed


# -- making devices ---------------------------------------------------------------------------------


def keygen(path: Path) -> str:
    """An ed25519 key pair at `path`; returns the public key as "ssh-ed25519 AAAA..."."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgekit-netns", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    kind, data, *_ = path.with_suffix(".pub").read_text().split()
    return f"{kind} {data}"


def _free_blocks(count: int) -> list[ipaddress.IPv4Network]:
    """`count` /30 networks of SUBNET that no interface here is using."""
    shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    used = set()
    for match in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+)/(\d+)", shown):
        net = ipaddress.ip_network(f"{match.group(1)}/{match.group(2)}", strict=False)
        if net.overlaps(SUBNET):
            used.add(net)
    blocks = []
    start = secrets.randbelow(1024) * 4  # spread concurrent runs apart
    subnets = list(SUBNET.subnets(new_prefix=30))
    for offset in range(len(subnets)):
        block = subnets[(start + offset) % len(subnets)]
        if not any(block.overlaps(u) for u in used):
            blocks.append(block)
            if len(blocks) == count:
                return blocks
    raise RuntimeError(f"no free /30 left in {SUBNET}")


def _run(argv: Sequence[str]) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


def _wait_for_banner(device: NsDevice, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert device.process is not None
        if device.process.poll() is not None:
            raise RuntimeError(
                f"sshd of {device.name} exited with code {device.process.returncode}: {device.log.read_text()[-2000:]}"
            )
        with (
            contextlib.suppress(OSError),
            socket.create_connection((device.address, device.port), timeout=1) as sock,
        ):
            if sock.recv(64).startswith(b"SSH-"):
                return
        time.sleep(0.02)
    raise RuntimeError(f"sshd of {device.name} did not answer on {device.address}:{device.port} within {timeout} s")


def sshd_config(path: Path, *, listen: str, port: int, host_key: Path, authorized_keys: Path, pid_file: Path) -> Path:
    path.write_text(
        f"ListenAddress {listen}\nPort {port}\nHostKey {host_key}\nPidFile {pid_file}\n"
        f"AuthorizedKeysFile {authorized_keys}\n"
        "UsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\nUseDNS no\n"
        "Subsystem sftp internal-sftp\nSetEnv SHLVL=5\nMaxSessions 64\nMaxStartups 64\nLogLevel ERROR\n"
    )
    return path


def _limit_cpu(device: NsDevice, quota: float, run_id: str) -> list[str]:
    """Make the device weak; returns the argv prefix that starts its sshd inside the limit."""
    name = f"{run_id}-{device.index}"
    v1 = _cpu_cgroup_v1()
    if v1 is not None:
        group = v1 / name
        with contextlib.suppress(OSError):
            group.mkdir()
            (group / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(max(1000, int(quota * _PERIOD_US))))
            device.cgroup = group
            device.weak_by = f"cgroup v1 cpu.cfs_quota_us {int(quota * _PERIOD_US)}/{_PERIOD_US} us"
            return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(group)]
        with contextlib.suppress(OSError):
            group.rmdir()
    v2 = _cgroup_v2()
    if v2 is not None:
        group = v2 / name
        with contextlib.suppress(OSError):
            with contextlib.suppress(OSError):
                (v2 / "cgroup.subtree_control").write_text("+cpu")
            group.mkdir()
            (group / "cpu.max").write_text(f"{max(1000, int(quota * _PERIOD_US))} {_PERIOD_US}")
            device.cgroup = group
            device.weak_by = f"cgroup v2 cpu.max {int(quota * _PERIOD_US)} {_PERIOD_US}"
            return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(group)]
        with contextlib.suppress(OSError):
            group.rmdir()
    if shutil.which("taskset"):
        device.weak_by = "taskset -c 0 (no cgroup cpu controller: one core, not a quota)"
        return ["taskset", "-c", "0"]
    raise RuntimeError("no way to limit the CPU here: no cgroup cpu controller and no taskset")


def _start(device: NsDevice, spec: NsSpec, run_id: str, folder: Path, authorized_keys: Path) -> None:
    ns, veth, peer = device.netns, device.host_veth, f"ekd{run_id[-4:]}{device.index}"
    _run(["ip", "netns", "add", ns])
    _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer])
    _run(["ip", "link", "set", peer, "netns", ns])
    _run(["ip", "addr", "add", f"{device.host_address}/30", "dev", veth])
    _run(["ip", "link", "set", veth, "up"])
    _run(["ip", "-n", ns, "addr", "add", f"{device.address}/30", "dev", peer])
    _run(["ip", "-n", ns, "link", "set", peer, "up"])
    _run(["ip", "-n", ns, "link", "set", "lo", "up"])
    if spec.rate:
        _run(
            ["tc", "qdisc", "add", "dev", veth, "root", "tbf", "rate", spec.rate, "burst", "32kbit", "latency", "400ms"]
        )
    device.workdir.mkdir(parents=True, exist_ok=True)
    if spec.workdir_size:  # mounted before sshd starts, so its mount namespace has it too
        _run(["mount", "-t", "tmpfs", "-o", f"size={spec.workdir_size},mode=0755", "tmpfs", str(device.workdir)])
        device.mounted = True
    config = sshd_config(
        folder / "sshd_config",
        listen=device.address,
        port=device.port,
        host_key=folder / "host_ed25519",
        authorized_keys=authorized_keys,
        pid_file=folder / "sshd.pid",
    )
    prefix = _limit_cpu(device, spec.cpu_quota, run_id) if spec.cpu_quota else []
    with contextlib.suppress(OSError):
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    with open(device.log, "wb") as log:
        device.process = subprocess.Popen(
            [*prefix, "ip", "netns", "exec", ns, str(SSHD), "-D", "-e", "-f", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _stop(device: NsDevice) -> list[str]:
    problems = []
    if device.process is not None and device.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            device.process.kill()
    _kill_namespace_processes(device.netns)
    if device.process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            device.process.wait(timeout=5)
    if device.mounted:
        done = subprocess.run(["umount", str(device.workdir)], capture_output=True, text=True)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(device.workdir)], capture_output=True)
        device.mounted = False
    done = subprocess.run(["ip", "netns", "del", device.netns], capture_output=True, text=True)
    if done.returncode != 0 and "No such file" not in done.stderr:
        problems.append(f"ip netns del {device.netns}: {done.stderr.strip()}")
    # deleting the namespace destroys the veth pair (a moment later); this also catches a pair whose peer
    # never moved in
    veth = Path(f"/sys/class/net/{device.host_veth}")
    if not wait_until(lambda: not veth.exists(), timeout=2.0):
        subprocess.run(["ip", "link", "del", device.host_veth], capture_output=True)
    if device.cgroup is not None:
        for _ in range(100):
            try:
                device.cgroup.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:  # processes still leaving
                time.sleep(0.02)
        else:
            problems.append(f"cgroup {device.cgroup} could not be removed")
    return problems


@contextlib.contextmanager
def netns_fleet(specs: Sequence[NsSpec], root: Path) -> Iterator[NetnsFleet]:
    """Make one namespace device per spec (see the module docstring); remove them all on exit."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"device names must be unique: {names}")
    cleanup_stale()
    run_id = f"ek-p{os.getpid()}r{secrets.token_hex(2)}"
    base = Path(root) / run_id
    base.mkdir(parents=True)
    client_key = base / "client_ed25519"
    authorized = base / "authorized_keys"
    authorized.write_text(keygen(client_key) + "\n")
    other_host_key_line = keygen(base / "other_host_ed25519")
    devices: list[NsDevice] = []
    try:
        for index, (spec, block) in enumerate(zip(specs, _free_blocks(len(specs)), strict=True)):
            folder = base / f"dev{index}-{spec.name}"
            folder.mkdir()
            hosts = list(block.hosts())
            device = NsDevice(
                spec=spec,
                index=index,
                netns=f"{run_id}-{index}",
                host_veth=f"ekh{run_id[-4:]}{index}",
                host_address=str(hosts[0]),
                address=str(hosts[1]),
                port=22,
                workdir=folder / "workdir",
                host_key_line=keygen(folder / "host_ed25519"),
                log=folder / "sshd.log",
            )
            devices.append(device)
            _start(device, spec, run_id, folder, authorized)
        for device in devices:
            _wait_for_banner(device)
        known_hosts = base / "known_hosts"
        known_hosts.write_text(
            "".join(
                f"{d.address} {other_host_key_line if d.spec.wrong_host_key else d.host_key_line}\n" for d in devices
            )
        )
        fleet = NetnsFleet(run_id=run_id, root=base, devices=devices, client_key=client_key, known_hosts=known_hosts)
        fleet._by_name = {d.name: d for d in devices}
        yield fleet
    finally:
        problems = [p for d in devices for p in _stop(d)]
        if problems:
            print("netns cleanup: " + "; ".join(problems), file=sys.stderr)


# -- a device in this machine's own namespace (loopback), and a killer -----------------------------------


@contextlib.contextmanager
def loopback_sshd(root: Path) -> Iterator[NetnsFleet]:
    """An sshd on 127.0.0.1 (no namespace), shaped like a one-device NetnsFleet named `loopback`."""
    base = Path(root) / f"ek-p{os.getpid()}r{secrets.token_hex(2)}-lo"
    base.mkdir(parents=True)
    client_key = base / "client_ed25519"
    authorized = base / "authorized_keys"
    authorized.write_text(keygen(client_key) + "\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    device = NsDevice(
        spec=NsSpec("loopback"),
        index=0,
        netns="",
        host_veth="",
        host_address="127.0.0.1",
        address="127.0.0.1",
        port=port,
        workdir=base / "workdir",
        host_key_line=keygen(base / "host_ed25519"),
        log=base / "sshd.log",
    )
    config = sshd_config(
        base / "sshd_config",
        listen="127.0.0.1",
        port=port,
        host_key=base / "host_ed25519",
        authorized_keys=authorized,
        pid_file=base / "sshd.pid",
    )
    with contextlib.suppress(OSError):
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    with open(device.log, "wb") as log:
        device.process = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        _wait_for_banner(device)
        known_hosts = base / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {device.host_key_line}\n")
        fleet = NetnsFleet(
            run_id=base.name, root=base, devices=[device], client_key=client_key, known_hosts=known_hosts
        )
        fleet._by_name = {"loopback": device}
        yield fleet
    finally:
        device.process.kill()
        device.process.wait(timeout=5)


class KillWhen(threading.Thread):
    """Watches a device's namespace; the first time a process whose command line holds `marker` appears
    there, everything in the namespace is killed (SIGKILL). `killed` then holds the command lines seen."""

    def __init__(self, device: NsDevice, marker: str, *, poll_s: float = 0.01, timeout_s: float = 60.0) -> None:
        super().__init__(daemon=True, name=f"kill-{device.name}")
        self.device, self.marker, self.poll_s, self.timeout_s = device, marker, poll_s, timeout_s
        self.killed: list[str] = []
        self.fired = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self._stop_event.is_set() and time.monotonic() < deadline:
            seen = [line for line in self.device.processes().values() if self.marker in line]
            if seen:
                self.device.kill_all()
                self.killed = seen
                self.fired.set()
                return
            time.sleep(self.poll_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, poll: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return condition()
