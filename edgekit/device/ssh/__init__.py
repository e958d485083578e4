"""The SSH transport, by job: `connect` (socket, jump hosts, host keys), `exec` (one command with bounded
output and a deadline), `facts` (what a device says about itself, checked), `transport` (`SshTransport`:
push, run, fetch the result, stop, clean up). Importing this package loads paramiko."""

from edgekit.device.ssh.transport import SshTransport

__all__ = ["SshTransport"]
