"""Open the SSH connection to a device, the way OpenSSH would, with edgekit's messages.

- the socket is opened here with TCP_NODELAY (paramiko never sets it, and each command would then
  stall about 40 ms), optionally through jump hosts (`direct-tcpip` channels, like ProxyJump);
- host keys are checked against known_hosts; an unknown key is refused unless trust on first use is
  asked for, and a changed key is always refused;
- only key authentication (a key file, ssh-agent or the default keys); edgekit never asks for or logs
  a password or passphrase;
- transient network errors (refused, timed out, reset, a silent server) are retried `retries` times,
  waiting 0.5 s, then 1 s, ... after a quick failure, and at once after one that waited out `timeout`
  (the fleet file's `connect_timeout` and `connect_retries`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import paramiko
from paramiko.hostkeys import HostKeyEntry

from edgekit.errors import DeviceError, HostKeyError
from edgekit.fleet.inventory import Device

log = logging.getLogger(__name__)


class _Transient(Exception):
    """A connection failure that may pass (refused, timed out, reset): worth another try."""

    def __init__(self, message: str, *, waited: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.waited = waited  # the try used up its timeout: no need to wait more before the next


@dataclass
class Connector:
    """Connects to `device` (named `name` in messages), through its jump hosts.

    `trust_on_first_use`: accept a host key that known_hosts lacks and save it there (a key that differs
    from the saved one is refused all the same); each key so saved is added to `trusted_keys` as
    "host key-type fingerprint".
    """

    device: Device
    name: str
    trust_on_first_use: bool = False
    timeout: float = 10.0
    retries: int = 2
    trusted_keys: list[str] = field(default_factory=list)

    def connect(self) -> list[paramiko.SSHClient]:
        """The open clients, jump hosts first and the device's last; nothing stays open on failure."""
        clients: list[paramiko.SSHClient] = []
        try:
            self._connect_chain(self.device, clients)
        except BaseException:
            for client in reversed(clients):
                client.close()
            raise
        return clients

    def _connect_chain(self, device: Device, clients: list[paramiko.SSHClient]) -> paramiko.SSHClient:
        """Connect to `device`, through its jump hosts (connected first and appended to `clients`)."""
        via = self._connect_chain(device.jump, clients) if device.jump is not None else None
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                client = self._connect_once(device, via)
                clients.append(client)
                return client
            except _Transient as exc:
                if attempt == self.retries:
                    tries = f" ({self.retries + 1} tries; `connect_retries` in the fleet file)" if self.retries else ""
                    raise DeviceError(f"device {self.name}: {exc.message}{tries}") from exc.__cause__
                pause = 0.0 if exc.waited else delay
                log.info("device %s: %s; retrying in %.1f s", self.name, exc.message, pause)
                time.sleep(pause)
                delay *= 2
        raise AssertionError("unreachable")

    def _where(self, device: Device) -> str:
        return f"{device.address}" + (f" (jump host of {self.name})" if device is not self.device else "")

    def _connect_once(self, device: Device, via: paramiko.SSHClient | None) -> paramiko.SSHClient:
        sock = self._tunnel(device, via) if via is not None else self._socket(device)
        client = paramiko.SSHClient()
        known_hosts = device.known_hosts
        if known_hosts.is_file():
            try:
                client.load_host_keys(str(known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                sock.close()
                raise DeviceError(f"device {self.name}: cannot read known_hosts {known_hosts}: {exc}") from exc
        client.set_missing_host_key_policy(
            TrustOnFirstUse(self.name, device, self.trusted_keys)
            if self.trust_on_first_use
            else RefuseUnknown(self.name, device)
        )
        try:
            self._handshake(client, device, sock)
        except BaseException:
            client.close()
            raise
        client.get_transport().set_keepalive(15)
        return client

    def _tunnel(self, device: Device, via: paramiko.SSHClient) -> paramiko.Channel:
        """A `direct-tcpip` channel from the jump host `via` to the device (what ProxyJump does)."""
        assert device.jump is not None
        try:
            return via.get_transport().open_channel(
                "direct-tcpip", (device.host, device.port), ("127.0.0.1", 0), timeout=self.timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise _Transient(
                f"jump host {device.jump.address} could not connect to {device.host}:{device.port} ({exc})"
            ) from exc

    def _socket(self, device: Device) -> socket.socket:
        """A TCP connection to the device with TCP_NODELAY set."""
        where, timeout = self._where(device), self.timeout
        try:
            sock = socket.create_connection((device.host, device.port), timeout=timeout)
        except socket.gaierror as exc:
            raise DeviceError(
                f"device {self.name}: cannot resolve host {device.host!r} ({exc.strerror}); check `host`"
            ) from exc
        except TimeoutError as exc:
            raise _Transient(
                f"no answer from {where} within {timeout:g} s; is the device on and reachable? "
                "(a slow link: raise `connect_timeout` in the fleet file)",
                waited=True,
            ) from exc
        except ConnectionRefusedError as exc:
            raise _Transient(f"{where} refused the connection; is sshd running there, and is the port right?") from exc
        except OSError as exc:
            raise _Transient(f"cannot reach {where}: {exc.strerror or exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _handshake(self, client: paramiko.SSHClient, device: Device, sock: Any) -> None:
        """SSH over `sock`: host key check and key authentication, each failure turned into what to do."""
        where, timeout = self._where(device), self.timeout
        try:
            client.connect(
                device.host,
                port=device.port,
                username=device.user,
                key_filename=str(device.key) if device.key else None,
                look_for_keys=device.key is None,
                allow_agent=True,
                sock=sock,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
            )
        except HostKeyError:
            raise
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(changed_key_message(self.name, device, exc.expected_key, exc.key)) from None
        except paramiko.PasswordRequiredException:
            raise DeviceError(
                f"device {self.name}: the key {device.key or '(default key)'} is protected by a passphrase; "
                f"load it into ssh-agent (ssh-add {device.key or ''}) - edgekit never asks for passphrases"
            ) from None
        except paramiko.AuthenticationException as exc:
            keys = f"key {device.key}" if device.key else "ssh-agent and the default keys (~/.ssh/id_*)"
            raise DeviceError(
                f"device {self.name}: {where} refused key authentication for user {device.user!r} with {keys} "
                f"({exc}); add your public key to ~{device.user}/.ssh/authorized_keys on the device "
                f"(ssh-copy-id -p {device.port} {device.user}@{device.host}) or set `key` in the fleet file"
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            transport = client.get_transport()
            if transport is None or not getattr(transport, "remote_version", ""):
                raise _Transient(
                    f"the SSH server at {where} accepted the connection but sent no banner within {timeout:g} s "
                    "(a frozen or overloaded sshd, or no SSH server on that port; if it is only slow, raise "
                    "`connect_timeout` in the fleet file)",
                    waited=True,
                ) from exc
            raise _Transient(f"SSH handshake with {where} failed: {exc or type(exc).__name__}") from exc


def known_hosts_name(device: Device) -> str:
    """The device's name as known_hosts writes it: `host`, or `[host]:port` off port 22."""
    return device.host if device.port == 22 else f"[{device.host}]:{device.port}"


def changed_key_message(name: str, device: Device, expected: Any, offered: Any) -> str:
    host = known_hosts_name(device)
    return (
        f"device {name}: the host key of {host} has CHANGED: {device.known_hosts} holds "
        f"{expected.get_name()} {expected.fingerprint}, the device offered {offered.get_name()} {offered.fingerprint}. "
        "Someone may be intercepting the connection, so edgekit refuses it. If the device was reinstalled or its "
        f"key regenerated on purpose, remove the old key with `ssh-keygen -R '{host}' -f {device.known_hosts}` "
        "and connect again (trust on first use then records the new key)."
    )


class RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Refuse a host key that known_hosts lacks, saying how to check and add it."""

    def __init__(self, name: str, device: Device) -> None:
        self.name, self.device = name, device

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        device = self.device
        raise HostKeyError(
            f"device {self.name}: the host key of {hostname} ({key.get_name()} {key.fingerprint}) is not "
            f"in {device.known_hosts}. Check the fingerprint on the device (ssh-keygen -lf "
            f"/etc/ssh/ssh_host_{key.get_name().removeprefix('ssh-')}_key.pub), then add it with "
            f"`ssh-keyscan -p {device.port} {device.host} >> {device.known_hosts}`, or connect once with trust on "
            "first use (--trust-on-first-use)"
        )


class TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Accept an unknown key and append it to known_hosts (paramiko's AutoAddPolicy rewrites the whole
    file, dropping lines it cannot parse; appending one line keeps the user's file as it was). Each key
    saved is added to `trusted` as "host key-type fingerprint"."""

    def __init__(self, name: str, device: Device, trusted: list[str]) -> None:
        self.name, self.device, self.trusted = name, device, trusted

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        path = self.device.known_hosts
        line = HostKeyEntry([hostname], key).to_line()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            prefix = ""
            if path.is_file() and path.stat().st_size > 0:
                with open(path, "rb") as handle:
                    handle.seek(-1, os.SEEK_END)
                    prefix = "" if handle.read(1) == b"\n" else "\n"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as handle:
                handle.write(prefix + line)
        except OSError as exc:
            raise HostKeyError(
                f"device {self.name}: cannot save the host key of {hostname} to {path} ({exc}); "
                "fix the file's permissions or set `known_hosts` in the fleet file"
            ) from exc
        client.get_host_keys().add(hostname, key.get_name(), key)
        entry = f"{hostname} {key.get_name()} {key.fingerprint}"
        self.trusted.append(entry)
        log.warning("device %s: trusted a new host key on first use, saved to %s: %s", self.name, path, entry)
