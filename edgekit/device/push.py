"""Push files to a device by content, so a file already there is never sent again.

The device keeps a content-addressed store under its work folder:

    <workdir>/store/<sha256>              every file pushed (artifact files, the agent zipapp, inputs)
    <workdir>/artifacts/<artifact id>/    an artifact as the agent reads it: hard links into the store
                                          (copies where links fail) under the manifest's names
    <workdir>/inputs/<listing sha256>/    a source video, image folder or reference pushed for a run
    <workdir>/runs/<run id>/              one run's plan.json and result.json (removed after the run)

A file goes up over SFTP to a temporary name, its sha256 is computed on the device, and only a match is
renamed (atomically) to its hash; a mismatch or a failed upload is deleted. A store file whose name is
present with the right size is hashed again on the device before it counts as there: one flipped on disk
is deleted with every folder that links it and pushed again, so a corrupted store heals on the next run.

Pushing needs only a `Remote`: commands and SFTP on a connected device (`SshTransport` is one), so this
module knows nothing of how the connection was made.
"""

from __future__ import annotations

import functools
import hashlib
import io
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

from edgekit.device.bundle import agent_zipapp_bytes
from edgekit.device.scripts import device_script
from edgekit.device.transport import ProgressFn
from edgekit.errors import DeviceError
from edgekit.hashing import canonical_json, sha256_file

if TYPE_CHECKING:
    import paramiko

    from edgekit.artifact import Artifact

_BATCH = 200  # files per device command (keeps command lines short)
_SPACE_MARGIN = 1 << 20  # bytes kept free beyond what a push needs
TEMP_PREFIX = ".tmp-"


class Remote(Protocol):
    """What a push needs from a connected device."""

    name: str
    """The device's name, for messages."""
    bytes_sent: int
    """Bytes uploaded over this connection so far; a push adds to it."""
    workdir_ready: bool
    """The work folder's layout was made and proven writable on this connection (see `prepare_workdir`)."""

    @property
    def workdir(self) -> str:
        """The device's work folder, an absolute path."""
        ...

    @property
    def sftp(self) -> paramiko.SFTPClient: ...

    @property
    def connected(self) -> bool: ...

    @property
    def python(self) -> str:
        """The device's Python as the fleet file says it (`python3`, `/usr/bin/env python3`); a shell splits it."""
        ...

    def exec(
        self, argv: Sequence[str], *, timeout: float = 60.0, stdin: bytes | str | None = None
    ) -> tuple[int, str, str]:
        """Run `argv` (each argument quoted) and return (exit code, stdout, stderr)."""
        ...


@dataclass(frozen=True)
class Blob:
    """One file to push: its content address, size, and where its bytes are on this machine."""

    sha256: str
    size: int
    source: Path | bytes

    @classmethod
    def from_file(cls, path: str | Path) -> Blob:
        path = Path(path)
        return cls(sha256_file(path), path.stat().st_size, path)

    @classmethod
    def from_bytes(cls, data: bytes) -> Blob:
        return cls(hashlib.sha256(data).hexdigest(), len(data), data)

    def open(self) -> Any:
        return io.BytesIO(self.source) if isinstance(self.source, bytes) else open(self.source, "rb")


@dataclass(frozen=True)
class PushResult:
    """Where the pushed thing is on the device, and what the push cost."""

    remote_path: str
    bytes_sent: int
    files_sent: int
    files_skipped: int


def push_agent(transport: Remote, *, progress: ProgressFn | None = None) -> PushResult:
    """Push the agent zipapp; `remote_path` is the store file to run with the device's Python."""
    blob = _agent_blob()
    sent, files_sent, skipped = push_blobs(transport, [blob], progress=progress)
    return PushResult(f"{transport.workdir}/store/{blob.sha256}", sent, files_sent, skipped)


def push_artifact(transport: Remote, artifact: Artifact, *, progress: ProgressFn | None = None) -> PushResult:
    """Push an artifact's files and lay them out as `<workdir>/artifacts/<id>/`; `remote_path` is that folder."""
    files = {path.relative_to(artifact.path).as_posix(): Blob.from_file(path) for path in artifact.files()}
    return push_tree(transport, "artifacts", artifact.id, files, progress=progress)


def push_tree(
    transport: Remote,
    kind: str,
    folder_id: str,
    files: dict[str, Blob],
    *,
    progress: ProgressFn | None = None,
) -> PushResult:
    """Push `files` (relative path -> Blob) and lay them out as `<workdir>/<kind>/<folder_id>/`."""
    for name in files:
        _check_relative(name, transport.name)
    sent, files_sent, skipped = push_blobs(transport, files.values(), progress=progress)
    folder = materialize(transport, kind, folder_id, {name: blob.sha256 for name, blob in files.items()})
    return PushResult(folder, sent, files_sent, skipped)


def push_plan_inputs(transport: Remote, plan: dict[str, Any], *, progress: ProgressFn | None = None) -> dict[str, Any]:
    """The plan with its file source (video or image folder), `reference` and `label_masks` pushed, when they
    exist on this machine, and their paths replaced by the device's copies. Other paths are left as they are."""
    plan = dict(plan)
    source = dict(plan.get("source") or {})
    uri = source.get("uri")
    if source.get("kind") in ("video", "images") and isinstance(uri, str) and uri:
        pushed = _push_local_path(transport, Path(uri).expanduser(), progress)
        if pushed is not None:
            source["uri"] = pushed
            plan["source"] = source
    for key in ("reference", "label_masks"):
        local = plan.get(key)
        if isinstance(local, str) and local:
            pushed = _push_local_path(transport, Path(local).expanduser(), progress)
            if pushed is not None:
                plan[key] = pushed
    return plan


def _push_local_path(transport: Remote, path: Path, progress: ProgressFn | None) -> str | None:
    if path.is_file():
        files = {path.name: Blob.from_file(path)}
        listing = canonical_json({name: blob.sha256 for name, blob in files.items()})
        folder = push_tree(transport, "inputs", hashlib.sha256(listing.encode()).hexdigest(), files, progress=progress)
        return f"{folder.remote_path}/{path.name}"
    if path.is_dir():
        files = {
            p.relative_to(path).as_posix(): Blob.from_file(p)
            for p in sorted(path.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        }
        listing = canonical_json({name: blob.sha256 for name, blob in files.items()})
        folder = push_tree(transport, "inputs", hashlib.sha256(listing.encode()).hexdigest(), files, progress=progress)
        return folder.remote_path
    return None


def prepare_workdir(transport: Remote) -> int | None:
    """Create the work folder's layout, prove it is writable, and return its free bytes (None: unknown).

    Raises DeviceError naming the device and the folder when it cannot be written.
    """
    workdir = transport.workdir
    script = (
        'umask 077; wd=$1; mkdir -p "$wd/store" "$wd/artifacts" "$wd/inputs" "$wd/runs" || exit 3\n'
        # models, inputs and results are the user's: not readable by other accounts on the device
        'chmod 700 "$wd/store" "$wd/artifacts" "$wd/inputs" "$wd/runs" 2>/dev/null\n'
        't="$wd/store/.write-test-$$"; { : > "$t"; } || exit 4; rm -f "$t"\n'
        # temporary uploads a crash left behind, older than a day (a push in progress is younger)
        f'find "$wd/store" -name "{TEMP_PREFIX}*" -mmin +1440 -exec rm -f {{}} + 2>/dev/null\n'
        'df -Pk "$wd" 2>/dev/null | tail -n 1\n'
        "exit 0\n"
    )
    rc, out, err = transport.exec(["sh", "-c", script, "sh", workdir], timeout=60)
    if rc != 0:
        reason = err.strip().splitlines()[-1] if err.strip() else f"exit code {rc}"
        raise DeviceError(
            f"device {transport.name}: the work folder {workdir} cannot be written ({reason}); set `workdir` in "
            "the fleet file to a writable folder with free space, or fix its permissions"
        )
    fields = out.split()
    try:
        return int(fields[3]) * 1024
    except (IndexError, ValueError):
        return None


def push_blobs(
    transport: Remote,
    blobs: Iterable[Blob],
    *,
    progress: ProgressFn | None = None,
    check_space: bool = True,
) -> tuple[int, int, int]:
    """Upload the blobs the device's store lacks; return (bytes sent, files sent, files already there).

    `progress(sent, total)` follows the bytes of this push. With `check_space`, a push that cannot fit
    in the device's free space is refused before anything is sent.
    """
    if not transport.workdir_ready:  # once per connection
        prepare_workdir(transport)
        transport.workdir_ready = True
    store = f"{transport.workdir}/store"
    unique = list({blob.sha256: blob for blob in blobs}.values())
    try:
        present = {entry.filename: entry.st_size for entry in transport.sftp.listdir_attr(store)}
    except OSError as exc:
        raise DeviceError(f"device {transport.name}: cannot list {store} ({exc})") from exc
    corrupt = _corrupt_store_files(transport, [b.sha256 for b in unique if present.get(b.sha256) == b.size])
    needed = [blob for blob in unique if present.get(blob.sha256) != blob.size or blob.sha256 in corrupt]
    total = sum(blob.size for blob in needed)
    if progress:
        progress(0, total)
    if not needed:
        return 0, 0, len(unique)
    free = _free_bytes(transport) if check_space else None
    if free is not None and total + _SPACE_MARGIN > free:
        raise DeviceError(
            f"device {transport.name}: the push needs {_size(total)} plus a {_size(_SPACE_MARGIN)} margin but the "
            f"disk holding {transport.workdir} has {_size(free)} free; free space on the device (removing "
            f"{store} is safe: edgekit refills it) or set `workdir` in the fleet file to a folder on a larger disk"
        )

    sent = 0
    temps: dict[str, Blob] = {}
    try:
        for blob in needed:
            temp = f"{store}/{TEMP_PREFIX}{blob.sha256}-{secrets.token_hex(4)}"
            temps[temp] = blob
            base = sent

            def callback(done: int, _total: int, base: int = base) -> None:
                if progress:
                    progress(base + done, total)

            try:
                with blob.open() as handle:
                    transport.sftp.putfo(handle, temp, file_size=blob.size, callback=callback, confirm=True)
            except (OSError, EOFError) as exc:
                free_now = _free_bytes(transport)
                space = "" if free_now is None else f"; {_size(free_now)} free on the disk holding {transport.workdir}"
                raise DeviceError(
                    f"device {transport.name}: uploading {_label(blob)} to {temp} failed ({exc or type(exc).__name__})"
                    f"{space}. The partial upload was removed; free space on the device or set `workdir` in the "
                    "fleet file to a folder on a larger disk"
                ) from exc
            sent += blob.size
            transport.bytes_sent += blob.size
        _verify_and_commit(transport, temps)
        temps = {}
    finally:
        if temps:
            _remove(transport, list(temps))
    return sent, len(needed), len(unique) - len(needed)


def materialize(transport: Remote, kind: str, folder_id: str, files: dict[str, str]) -> str:
    """Lay out store files (relative path -> sha256) as `<workdir>/<kind>/<folder_id>/`, built beside it
    and renamed into place, so the folder either is complete or does not exist. Returns its path."""
    if "/" in kind or "/" in folder_id or folder_id in ("", ".", ".."):
        raise ValueError(f"bad folder {kind}/{folder_id}")
    workdir = transport.workdir
    final = f"{workdir}/{kind}/{folder_id}"
    try:
        transport.sftp.stat(final)
        return final
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise DeviceError(f"device {transport.name}: cannot look at {final} ({exc})") from exc
    temp = f"{workdir}/{kind}/{TEMP_PREFIX}{folder_id}-{secrets.token_hex(4)}"
    add = (
        'store=$1; dir=$2; shift 2; mkdir -p "$dir" || exit 3\n'
        "while [ $# -ge 2 ]; do\n"
        '  case "$2" in */*) mkdir -p "$dir/${2%/*}" || exit 3;; esac\n'
        '  ln -f "$store/$1" "$dir/$2" 2>/dev/null || cp "$store/$1" "$dir/$2" || exit 3\n'
        "  shift 2\n"
        "done\n"
    )
    commit = (
        "dir=$1; final=$2\n"
        'if [ -d "$final" ]; then rm -rf "$dir"; exit 0; fi\n'
        'mv "$dir" "$final" || { rm -rf "$dir"; exit 3; }\n'
        # another push may have won the race after the test above: drop our copy inside theirs
        'name=${dir##*/}; if [ -d "$final/$name" ]; then rm -rf "$final/$name"; fi\n'
    )
    pairs = [item for name, sha in sorted(files.items()) for item in (sha, name)]
    try:
        for start in range(0, max(len(pairs), 2), 2 * _BATCH):
            batch = pairs[start : start + 2 * _BATCH]
            rc, _, err = transport.exec(["sh", "-c", add, "sh", f"{workdir}/store", temp, *batch], timeout=120)
            if rc != 0:
                raise DeviceError(
                    f"device {transport.name}: cannot lay out {final} ({err.strip()[-300:] or f'exit code {rc}'}); "
                    f"check free space and permissions of {workdir}"
                )
        rc, _, err = transport.exec(["sh", "-c", commit, "sh", temp, final], timeout=60)
        if rc != 0:
            raise DeviceError(f"device {transport.name}: cannot create {final} ({err.strip()[-300:]})")
    except BaseException:
        _remove(transport, [temp], folder=True)
        raise
    return final


# a file's sha256 on the device: sha256sum, shasum or the device's Python (py=$1 and sha256_py=$2 are set)
_SUM_OF = (
    "sum_of() {\n"
    '  if command -v sha256sum >/dev/null 2>&1; then set -- $(sha256sum < "$1"); echo "$1"\n'
    '  elif command -v shasum >/dev/null 2>&1; then set -- $(shasum -a 256 < "$1"); echo "$1"\n'
    '  else $py -c "$sha256_py" "$1"\n'
    "  fi\n"
    "}\n"
)


def _corrupt_store_files(transport: Remote, shas: list[str]) -> set[str]:
    """Hash the store files named `shas` on the device; a file whose content no longer matches its name is
    deleted with every artifact/input folder holding a hard link to it (they would keep the bad bytes), and
    its sha returned, to be pushed again."""
    script = (
        "py=$1; sha256_py=$2; wd=$3; shift 3\n" + _SUM_OF + "while [ $# -ge 1 ]; do\n"
        '  f="$wd/store/$1"\n'
        '  if [ "$(sum_of "$f")" != "$1" ]; then\n'
        '    find "$wd/artifacts" "$wd/inputs" -samefile "$f" 2>/dev/null | while IFS= read -r link; do\n'
        '      rel=${link#"$wd"/}; kind=${rel%%/*}; top=${rel#*/}; top=${top%%/*}\n'
        '      case "$kind/$top" in artifacts/?*|inputs/?*) rm -rf "$wd/$kind/$top";; esac\n'
        "    done\n"
        '    rm -f "$f"; echo "CORRUPT $1"\n'
        "  fi\n"
        "  shift\n"
        "done\n"
    )
    corrupt: set[str] = set()
    for start in range(0, len(shas), _BATCH):
        batch = shas[start : start + _BATCH]
        argv = ["sh", "-c", script, "sh", transport.python, device_script("sha256_file"), transport.workdir, *batch]
        rc, out, err = transport.exec(argv, timeout=600)
        if rc != 0:
            raise DeviceError(
                f"device {transport.name}: cannot check the store files in {transport.workdir}/store "
                f"({err.strip()[-300:] or f'exit code {rc}'})"
            )
        corrupt |= {line.split()[1] for line in out.splitlines() if line.startswith("CORRUPT ") and len(line) > 8}
    return corrupt & set(shas)  # never trust a name the device made up


def _verify_and_commit(transport: Remote, temps: dict[str, Blob]) -> None:
    """Hash each upload on the device; rename a match to its hash, delete a mismatch."""
    script = (
        "py=$1; sha256_py=$2; shift 2\n" + _SUM_OF + "bad=0\n"
        "while [ $# -ge 3 ]; do\n"
        '  got=$(sum_of "$1")\n'
        '  if [ "$got" = "$2" ]; then chmod 400 "$1" 2>/dev/null; mv -f "$1" "$3" || { rm -f "$1"; bad=1; }\n'
        '  else rm -f "$1"; echo "MISMATCH $3 $got"; bad=1; fi\n'
        "  shift 3\n"
        "done\n"
        "exit $bad\n"
    )
    store = f"{transport.workdir}/store"
    items = list(temps.items())
    for start in range(0, len(items), _BATCH):
        batch = items[start : start + _BATCH]
        args = [x for temp, blob in batch for x in (temp, blob.sha256, f"{store}/{blob.sha256}")]
        argv = ["sh", "-c", script, "sh", transport.python, device_script("sha256_file"), *args]
        rc, out, err = transport.exec(argv, timeout=600)
        if rc != 0:
            mismatches = [line for line in out.splitlines() if line.startswith("MISMATCH")]
            detail = mismatches[0] if mismatches else (err.strip()[-300:] or f"exit code {rc}")
            raise DeviceError(
                f"device {transport.name}: an upload did not arrive intact ({detail}); it was discarded. "
                "Push again; if this repeats, check the device's disk and memory"
            )


def _remove(transport: Remote, paths: list[str], *, folder: bool = False) -> None:
    try:
        if transport.connected:
            transport.exec(["rm", "-rf" if folder else "-f", "--", *paths], timeout=60)
    except Exception:  # cleaning up after a failure must not hide the failure
        pass


def _free_bytes(transport: Remote) -> int | None:
    try:
        rc, out, _ = transport.exec(["df", "-Pk", transport.workdir], timeout=30)
        return int(out.strip().splitlines()[-1].split()[3]) * 1024 if rc == 0 else None
    except Exception:  # df missing or unusual: the space is unknown, not an error
        return None


def _check_relative(name: str, device: str) -> None:
    path = PurePosixPath(name)
    if (
        not name
        or path.is_absolute()
        or any(part in ("", ".", "..") for part in name.split("/"))
        or any(c in name for c in "\n\r\0\\")
    ):
        raise DeviceError(f"device {device}: refusing to push a file named {name!r}: not a plain relative path")


def _label(blob: Blob) -> str:
    return str(blob.source) if isinstance(blob.source, Path) else f"{_size(blob.size)} of data"


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


@functools.lru_cache(maxsize=1)
def _agent_blob() -> Blob:
    return Blob.from_bytes(agent_zipapp_bytes())
