"""Pushing by content over a real SSH server: sent once, verified on the device, never half-used.

The device is this machine, so the tests look at the device's work folder directly.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from edgekit.artifact import Artifact, write_artifact
from edgekit.device.plan import Source, make_plan
from edgekit.device.push import Blob, push_blobs
from edgekit.device.ssh import SshTransport
from edgekit.errors import ArtifactError, DeviceError


def store_listing(workdir: str | Path) -> list[str]:
    return sorted(os.listdir(Path(workdir) / "store"))


def test_second_push_sends_nothing(device, digits_artifact):
    progress: list[tuple[int, int]] = []
    size = sum(path.stat().st_size for path in digits_artifact.files())
    with SshTransport(device) as ssh:
        first = ssh.push_artifact(digits_artifact, progress=lambda sent, total: progress.append((sent, total)))
        assert (first.bytes_sent, first.files_sent, first.files_skipped) == (size, 2, 0)
        assert progress[0] == (0, size) and progress[-1] == (size, size)
        assert first.remote_path == f"{ssh.workdir}/artifacts/{digits_artifact.id}"
        pushed = Artifact.load(first.remote_path)  # every file checked against its sha256
        assert pushed.id == digits_artifact.id
        second = ssh.push_artifact(digits_artifact)
        assert (second.bytes_sent, second.files_sent, second.files_skipped) == (0, 0, 2)
        assert ssh.bytes_sent == size
        workdir = ssh.workdir
    with SshTransport(device) as ssh:  # a new connection finds the store as it was
        assert ssh.push_artifact(digits_artifact).bytes_sent == 0
    expected = sorted(
        [
            *digits_artifact.manifest["files"].values(),
            hashlib.sha256((digits_artifact.path / "manifest.json").read_bytes()).hexdigest(),
        ]
    )
    assert store_listing(workdir) == expected  # named by hash, no temporary files left


def test_a_store_file_flipped_on_disk_heals_on_the_next_push(device, digits_artifact):
    """One byte flipped in place in a store file (the artifact folder links the same bytes): the next push hashes
    the store, drops the bad file and the folders linking it, sends it again, and the artifact loads."""
    with SshTransport(device) as ssh:
        folder = Path(ssh.push_artifact(digits_artifact).remote_path)
        model = folder / digits_artifact.manifest["model_file"]
        stored = Path(ssh.workdir) / "store" / digits_artifact.manifest["files"][model.name]
        assert os.path.samefile(model, stored)
        stored.chmod(0o644)
        with stored.open("r+b") as handle:  # in place: the hard link in the artifact folder sees it too
            first = handle.read(1)
            handle.seek(0)
            handle.write(bytes([first[0] ^ 0xFF]))
        with pytest.raises(ArtifactError):
            Artifact.load(folder)
        again = ssh.push_artifact(digits_artifact)
        assert (again.files_sent, again.bytes_sent) == (1, stored.stat().st_size)
        assert Artifact.load(again.remote_path).id == digits_artifact.id  # every file checked against its sha256
        assert ssh.push_artifact(digits_artifact).files_sent == 0  # and then it is there
        assert (stored.parent.stat().st_mode & 0o777) == 0o700 and (stored.stat().st_mode & 0o777) == 0o400


def test_a_partial_store_file_is_replaced_and_a_stale_upload_ignored(device):
    data = os.urandom(200_000)
    blob = Blob.from_bytes(data)
    with SshTransport(device) as ssh:
        assert push_blobs(ssh, [blob]) == (len(data), 1, 0)
        store = Path(ssh.workdir) / "store"
        # a file cut short under the right name, and a stale partial upload from a crash
        (store / blob.sha256).unlink()
        (store / blob.sha256).write_bytes(data[:1000])
        stale = store / f".tmp-{blob.sha256}-dead"
        stale.write_bytes(data[:5000] + b"tampered")
        assert push_blobs(ssh, [blob]) == (len(data), 1, 0)
        assert (store / blob.sha256).read_bytes() == data
        assert push_blobs(ssh, [blob]) == (0, 0, 1)


def test_an_upload_that_does_not_match_its_hash_is_discarded(device):
    data = os.urandom(50_000)
    wrong = Blob(sha256="0" * 64, size=len(data), source=data)  # the bytes changed after they were hashed
    with SshTransport(device) as ssh:
        with pytest.raises(DeviceError, match=r"device loopback: an upload did not arrive intact \(MISMATCH .*0{64}"):
            push_blobs(ssh, [wrong])
        assert store_listing(ssh.workdir) == []
        assert push_blobs(ssh, [Blob.from_bytes(data)])[0] == len(data)  # the connection is still fine


@pytest.fixture
def mount_tmpfs(tmp_path: Path):
    """Mount a 64 KiB tmpfs (read-only when asked); needs root, else the test skips."""
    mounted: list[Path] = []

    def mount(name: str, *, read_only: bool = False) -> Path:
        point = tmp_path / name
        point.mkdir()
        options = "size=64k" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture
def big_artifact(tmp_path: Path) -> Artifact:
    manifest = {"target": "x86-ort", "engine": "onnxruntime", "precision": "fp32", "model_file": "model.bin"}
    return write_artifact(tmp_path / "big-artifact", {"model.bin": os.urandom(300_000)}, manifest)


def test_full_disk_is_refused_before_sending(sshd, tmp_path: Path, mount_tmpfs, big_artifact):
    disk = mount_tmpfs("tiny")
    device = sshd.device(tmp_path, workdir=str(disk / "edgekit"))
    with SshTransport(device) as ssh:
        with pytest.raises(DeviceError) as info:
            ssh.push_artifact(big_artifact)
        assert ssh.bytes_sent == 0
    message = str(info.value)
    assert message.startswith("device loopback: the push needs 293.2 KiB plus a 1.0 MiB margin but the disk holding")
    assert f"the disk holding {disk / 'edgekit'} has" in message and "free space on the device" in message
    assert store_listing(disk / "edgekit") == []


def test_disk_filling_up_during_an_upload(sshd, tmp_path: Path, mount_tmpfs):
    disk = mount_tmpfs("tiny")
    device = sshd.device(tmp_path, workdir=str(disk / "edgekit"))
    failed = r"device loopback: uploading .* to .*/store/\.tmp-.* failed"
    with SshTransport(device) as ssh, pytest.raises(DeviceError, match=failed) as info:
        push_blobs(ssh, [Blob.from_bytes(os.urandom(300_000))], check_space=False)
    assert "The partial upload was removed" in str(info.value) and "free on the disk holding" in str(info.value)
    assert store_listing(disk / "edgekit") == []


def test_read_only_workdir(sshd, tmp_path: Path, mount_tmpfs, digits_artifact):
    disk = mount_tmpfs("readonly", read_only=True)
    device = sshd.device(tmp_path, workdir=str(disk / "edgekit"))
    not_writable = r"device loopback: the work folder .*/readonly/edgekit cannot be written"
    with SshTransport(device) as ssh, pytest.raises(DeviceError, match=not_writable):
        ssh.push_artifact(digits_artifact)
    # the same failure through run(): a result with status error, not an exception
    plan = make_plan("unused", Source("video", "/nonexistent.mp4"))
    result = SshTransport(device).run(digits_artifact, plan, timeout_s=30)
    assert result["status"] == "error"
    assert "Read-only file system" in result["errors"][0]["message"]
    assert "set `workdir` in the fleet file" in result["errors"][0]["message"]


def test_a_plan_that_cannot_be_written_leaves_no_run_folder(sshd, tmp_path: Path, mount_tmpfs):
    disk = mount_tmpfs("full")
    device = sshd.device(tmp_path, workdir=str(disk / "edgekit"))
    with SshTransport(device) as ssh:
        ssh.exec(["mkdir", "-p", f"{ssh.workdir}/runs"])
        ssh.exec(["sh", "-c", f"cat /dev/zero > {disk}/filler 2>/dev/null; true"])  # the disk is now full
        plan = {"run_id": "full-disk-run", "padding": "x" * 200_000}
        with pytest.raises(DeviceError, match="cannot write the plan into"):
            ssh._write_plan(plan)
        assert os.listdir(disk / "edgekit" / "runs") == []
