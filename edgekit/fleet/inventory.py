"""The fleet file: which devices exist, how to reach them over SSH, and what they are for.

A fleet is a TOML file of `[[device]]` tables:

    [defaults]                      # optional: any device key except name and host
    user = "edge"
    key = "~/.ssh/edgekit_ed25519"

    [[device]]
    name = "jetson-1"               # unique; results are stored under it
    host = "10.0.0.12"              # an address, or a Host alias from ~/.ssh/config
    port = 22
    user = "nvidia"
    key = "~/.ssh/id_ed25519"       # optional: ssh-agent and the default keys otherwise
    target = "jetson-trt"
    tags = ["jetson", "lab"]
    workdir = "~/.edgekit"          # on the device; `~` is the login user's home there
    python = "python3"              # the interpreter that runs the agent on the device
    jump = "bastion"                # optional: another device's name, or "user@host:port"
    known_hosts = "~/.ssh/known_hosts"
    connect_timeout = 10            # seconds to wait for TCP, the SSH banner and authentication, per try
    connect_retries = 2             # more tries after a refused, silent or reset connection

Host aliases from `~/.ssh/config` work: HostName, Port, User, IdentityFile, ProxyJump and
UserKnownHostsFile fill whatever the fleet entry leaves out (the fleet file wins). Relative `key` and
`known_hosts` paths are taken relative to the fleet file's folder. A jump given as `user@host:port` uses
the device's own `key` and `known_hosts`.
"""

from __future__ import annotations

import difflib
import getpass
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULT_WORKDIR = "~/.edgekit"
DEFAULT_PYTHON = "python3"
DEFAULT_SSH_CONFIG = Path("~/.ssh/config")
DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_CONNECT_RETRIES = 2
DEVICE_KEYS = (
    *("name", "host", "port", "user", "key", "target", "tags", "workdir", "python", "jump", "known_hosts"),
    *("connect_timeout", "connect_retries"),
)
DEFAULT_KEYS = tuple(k for k in DEVICE_KEYS if k not in ("name", "host"))
_MAX_JUMPS = 8
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:+\-\[\]]*$")


class InventoryError(EdgekitError):
    """A fleet file or device description that cannot be used; the message names the file and entry."""


@dataclass(frozen=True)
class Device:
    """One device and how to reach it. `jump` is the device to tunnel through (ProxyJump), if any."""

    name: str
    host: str
    port: int = 22
    user: str = field(default_factory=getpass.getuser)
    key: Path | None = None
    target: str | None = None
    tags: tuple[str, ...] = ()
    workdir: str = DEFAULT_WORKDIR
    python: str = DEFAULT_PYTHON
    jump: Device | None = None
    known_hosts: Path = field(default_factory=lambda: DEFAULT_KNOWN_HOSTS.expanduser())
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT  # seconds per try: TCP, SSH banner, authentication
    connect_retries: int = DEFAULT_CONNECT_RETRIES  # tries after the first on a transient failure

    @property
    def address(self) -> str:
        """`user@host:port`, as messages show it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"


def load_fleet(path: str | Path, *, ssh_config: str | Path | None = DEFAULT_SSH_CONFIG) -> list[Device]:
    """Read a fleet file; raise InventoryError naming the file and the entry that is wrong.

    `ssh_config` is the OpenSSH client config whose Host aliases apply (None: ignore it).
    """
    path = Path(path)
    defaults, entries = _read_fleet_file(path)
    config = _read_ssh_config(ssh_config)
    raw = _device_entries(path, defaults, entries)
    base = path.parent
    devices: dict[str, Device] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> Device:
        if name in devices:
            return devices[name]
        if name in chain:
            raise InventoryError(f"fleet file {path}: jump hosts form a loop: {' -> '.join((*chain, name))}")
        entry = raw[name]
        label = f"fleet file {path}: device {name!r}"
        jump_spec = entry.get("jump")
        jump = None
        if jump_spec is not None:
            if not isinstance(jump_spec, str) or not jump_spec:
                raise InventoryError(f"{label}: `jump` must be another device's name or 'user@host:port'")
            if jump_spec in raw:
                jump = resolve(jump_spec, (*chain, name))
        device = _make_device(entry, label, base, config, jump=jump)
        if jump_spec is not None and jump is None:
            device = replace(device, jump=_jump_device(jump_spec, device, label, config))
        devices[name] = device
        return device

    return [resolve(name, ()) for name in raw]


def _read_fleet_file(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The [defaults] table and the [[device]] tables of a fleet file, checked for shape and known keys."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InventoryError(f"cannot read fleet file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"fleet file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - {"device", "defaults"})
    if unknown:
        raise InventoryError(
            f"fleet file {path}: unknown top-level key {unknown[0]!r}{_suggest(unknown[0], ('device', 'defaults'))}; "
            "devices are [[device]] tables and shared settings go in [defaults]"
        )
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise InventoryError(f"fleet file {path}: [defaults] must be a table")
    _check_keys(defaults, DEFAULT_KEYS, f"fleet file {path}: [defaults]")
    entries = data.get("device", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InventoryError(f"fleet file {path}: `device` must be [[device]] tables, one per device")
    if not entries:
        raise InventoryError(f"fleet file {path} lists no devices; add a [[device]] table with a name and a host")
    return defaults, entries


def _device_entries(path: Path, defaults: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each device's settings (the defaults under its own) by its name, in file order; names checked unique."""
    raw: dict[str, dict[str, Any]] = {}
    where: dict[str, str] = {}
    for index, entry in enumerate(entries, start=1):
        label = f"fleet file {path}: device #{index}"
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InventoryError(
                f"{label}: `name` must be a non-empty string of letters, digits and ._-@ (got {name!r})"
            )
        label = f"fleet file {path}: device {name!r}"
        if name in raw:
            raise InventoryError(f"{label}: the name is used twice ({where[name]} and #{index}); names must be unique")
        _check_keys(entry, DEVICE_KEYS, label)
        raw[name] = {**defaults, **entry}
        where[name] = f"#{index}"
    return raw


def device_from_alias(alias: str, *, ssh_config: str | Path | None = DEFAULT_SSH_CONFIG, **settings: Any) -> Device:
    """A device from a Host alias of the SSH config (or `user@host:port`), with `settings` for the rest
    (target, tags, workdir, python, key, known_hosts)."""
    config = _read_ssh_config(ssh_config)
    user, host, port = _split_spec(alias, f"device {alias!r}")
    entry = {"name": alias, "host": host, **settings}
    if user is not None:
        entry.setdefault("user", user)
    if port is not None:
        entry.setdefault("port", port)
    _check_keys(entry, DEVICE_KEYS, f"device {alias!r}")
    label = f"device {alias!r}"
    jump_spec = entry.pop("jump", None)
    device = _make_device(entry, label, Path.cwd(), config, jump=None)
    if jump_spec is not None:
        device = replace(device, jump=_jump_device(jump_spec, device, label, config))
    return device


def select(devices: Iterable[Device], tags: Iterable[str] = (), names: Iterable[str] = ()) -> list[Device]:
    """The devices carrying every tag in `tags` (and named in `names`, when given), in fleet order.

    Raises InventoryError when a name is unknown or nothing matches, listing what exists.
    """
    devices = list(devices)
    tags, names = set(tags), list(names)
    known_names = [d.name for d in devices]
    for name in names:
        if name not in known_names:
            raise InventoryError(
                f"no device named {name!r} in the fleet{_suggest(name, known_names)}; "
                f"devices: {', '.join(known_names) or '(none)'}"
            )
    chosen = [d for d in devices if tags <= set(d.tags) and (not names or d.name in names)]
    if not chosen:
        known_tags = sorted({t for d in devices for t in d.tags})
        raise InventoryError(
            f"no device has all of the tags {sorted(tags)}"
            + (f" among {names}" if names else "")
            + f"; tags in the fleet: {', '.join(known_tags) or '(none)'}"
        )
    return chosen


def _make_device(
    entry: dict[str, Any], label: str, base: Path, config: Any, *, jump: Device | None, proxyjump: bool = True
) -> Device:
    """A checked Device from one entry; `proxyjump`: take the jump host from the SSH config when the
    entry names none."""
    host = entry.get("host")
    if not isinstance(host, str) or not host.strip() or any(c.isspace() for c in host):
        raise InventoryError(f"{label}: `host` is missing or not a host name/address (got {host!r})")
    found = config.lookup(host) if config is not None else {}
    port = entry.get("port", found.get("port", 22))
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InventoryError(f"{label}: `port` must be a whole number from 1 to 65535 (got {port!r})")
    user = entry.get("user", found.get("user")) or getpass.getuser()
    _require_str(user, "user", label)
    key = entry.get("key")
    if key is not None:
        _require_str(key, "key", label)
        key = _local_path(key, base)
        if not key.is_file():
            raise InventoryError(f"{label}: key file {key} does not exist; fix `key` or remove it to use ssh-agent")
    else:
        candidates = [Path(p).expanduser() for p in found.get("identityfile", [])]
        key = next((p for p in candidates if p.is_file()), None)
    known_hosts = entry.get("known_hosts")
    if known_hosts is not None:
        _require_str(known_hosts, "known_hosts", label)
        known_hosts = _local_path(known_hosts, base)
    else:
        configured = (found.get("userknownhostsfile") or "").split()
        known_hosts = Path(configured[0]).expanduser() if configured else DEFAULT_KNOWN_HOSTS.expanduser()
    tags = entry.get("tags", [])
    if isinstance(tags, str) or not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise InventoryError(f'{label}: `tags` must be a list of non-empty strings, like ["lab", "arm64"]')
    target = entry.get("target")
    if target is not None:
        _require_str(target, "target", label)
    workdir = entry.get("workdir", DEFAULT_WORKDIR)
    _require_str(workdir, "workdir", label)
    python = entry.get("python", DEFAULT_PYTHON)
    _require_str(python, "python", label)
    connect_timeout, connect_retries = _connect_settings(entry, label)
    device = Device(
        name=entry["name"],
        host=found.get("hostname", host) if config is not None else host,
        port=port,
        user=user,
        key=key,
        target=target,
        tags=tuple(tags),
        workdir=workdir.rstrip("/") or "/",
        python=python,
        jump=jump,
        known_hosts=known_hosts,
        connect_timeout=connect_timeout,
        connect_retries=connect_retries,
    )
    proxy = found.get("proxyjump")
    if proxyjump and jump is None and "jump" not in entry and proxy and proxy.lower() != "none":
        device = replace(device, jump=_jump_device(proxy, device, label, config))
    return device


def _connect_settings(entry: dict[str, Any], label: str) -> tuple[float, int]:
    """`connect_timeout` (seconds, over 0, at most 600) and `connect_retries` (0 to 10)."""
    timeout = entry.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
        raise InventoryError(f"{label}: `connect_timeout` must be seconds above 0 and at most 600 (got {timeout!r})")
    retries = entry.get("connect_retries", DEFAULT_CONNECT_RETRIES)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise InventoryError(f"{label}: `connect_retries` must be a whole number from 0 to 10 (got {retries!r})")
    return float(timeout), retries


def _jump_device(spec: str, via: Device, label: str, config: Any, depth: int = 0) -> Device:
    """The jump host for `spec` (`[user@]host[:port]`, a Host alias, or OpenSSH's comma-separated chain,
    first hop first)."""
    if depth > _MAX_JUMPS:
        raise InventoryError(f"{label}: more than {_MAX_JUMPS} jump hosts; check ProxyJump for a loop")
    hops = [hop.strip() for hop in spec.split(",") if hop.strip()]
    if not hops:
        raise InventoryError(f"{label}: `jump` {spec!r} names no host")
    *earlier, last = hops
    user, host, port = _split_spec(last, label)
    found = config.lookup(host) if config is not None else {}
    entry: dict[str, Any] = {"name": last, "host": host}
    if user is not None:
        entry["user"] = user
    if port is not None:
        entry["port"] = port
    if via.key is not None and not found.get("identityfile"):
        entry["key"] = str(via.key)
    if not found.get("userknownhostsfile"):
        entry["known_hosts"] = str(via.known_hosts)
    entry["connect_timeout"], entry["connect_retries"] = via.connect_timeout, via.connect_retries
    jump = None
    if earlier:
        jump = _jump_device(",".join(earlier), via, label, config, depth + 1)
    elif found.get("proxyjump") and found["proxyjump"].lower() != "none":
        jump = _jump_device(found["proxyjump"], via, label, config, depth + 1)
    return _make_device(entry, f"{label}: jump host {last!r}", Path.cwd(), config, jump=jump, proxyjump=False)


def _split_spec(spec: str, label: str) -> tuple[str | None, str, int | None]:
    """`[user@]host[:port]`, where an IPv6 host is written in brackets: `[fe80::1]:22`."""
    user, _, hostport = spec.rpartition("@")
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", hostport)
    if not match or (user == "" and "@" in spec):
        raise InventoryError(f"{label}: {spec!r} is not a host name or 'user@host:port'")
    host = match.group(1) or match.group(3)
    port_text = match.group(2) or match.group(4)
    port = int(port_text) if port_text else None
    if port is not None and not 1 <= port <= 65535:
        raise InventoryError(f"{label}: port {port} in {spec!r} is not from 1 to 65535")
    return (user or None), host, port


def _read_ssh_config(path: str | Path | None) -> Any:
    if path is None:
        return None
    import paramiko

    path = Path(path).expanduser()
    if not path.is_file():
        return None
    try:
        return paramiko.SSHConfig.from_path(str(path))
    except Exception as exc:  # paramiko raises several kinds for a malformed file
        raise InventoryError(f"cannot read SSH config {path}: {exc}") from exc


def _check_keys(entry: dict[str, Any], allowed: tuple[str, ...], label: str) -> None:
    for key in entry:
        if key not in allowed:
            raise InventoryError(
                f"{label}: unknown key {key!r}{_suggest(key, allowed)}; known keys: {', '.join(allowed)}"
            )


def _require_str(value: Any, key: str, label: str) -> None:
    if not isinstance(value, str) or not value:
        raise InventoryError(f"{label}: `{key}` must be a non-empty string (got {value!r})")


def _local_path(text: str, base: Path) -> Path:
    path = Path(os.path.expandvars(text)).expanduser()
    return path if path.is_absolute() else (base / path)


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
