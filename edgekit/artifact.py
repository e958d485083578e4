"""Artifacts: a folder with one target's model file(s) and a manifest, addressed by content.

The id is the sha256 of the canonical manifest JSON, and the manifest lists the sha256 of every file,
so the id covers every byte and building the same model twice gives the same id.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import ArtifactError
from edgekit.hashing import canonical_json, sha256_file, sha256_json
from edgekit.runtime.manifest import MANIFEST_SCHEMA as SCHEMA
from edgekit.runtime.manifest import MANIFEST_VERSION as VERSION
from edgekit.staging import staged_folder

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @property
    def id(self) -> str:
        return sha256_json(self.manifest)

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model_file"]

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> Artifact:
        """Read an artifact folder; with `verify`, check every listed file against its sha256."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise ArtifactError(f"{path} is not an artifact: it has no {MANIFEST}; build one with `edgekit build`")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{manifest_path} is not valid JSON ({exc}); rebuild the artifact") from exc
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
            raise ArtifactError(f"{manifest_path} is not an edgekit artifact manifest (schema {SCHEMA!r} expected)")
        if manifest.get("version", 0) > VERSION:
            raise ArtifactError(
                f"{manifest_path} has manifest version {manifest.get('version')}, newer than this edgekit "
                f"understands ({VERSION}); upgrade edgekit"
            )
        _check_file_names(manifest, manifest_path)
        artifact = cls(path, manifest)
        if verify:
            artifact.verify()
        return artifact

    def verify(self) -> None:
        for name, expected in self.manifest.get("files", {}).items():
            file_path = self.path / name
            if not file_path.is_file():
                raise ArtifactError(f"artifact {self.path} lacks {name}, which its manifest lists; rebuild it")
            if sha256_file(file_path) != expected:
                raise ArtifactError(f"artifact file {file_path} does not match its sha256 in the manifest; rebuild it")

    def files(self) -> list[Path]:
        return [self.path / MANIFEST, *(self.path / name for name in sorted(self.manifest.get("files", {})))]


def _check_file_names(manifest: dict[str, Any], manifest_path: Path) -> None:
    """Every file a manifest names is a plain file name inside the artifact folder (write_artifact makes only
    those): an absolute path or `..` would make the host or a device read or overwrite outside it."""
    files = manifest.get("files", {})
    names = [*(files if isinstance(files, dict) else [files])]
    if "model_file" in manifest:
        names.append(manifest["model_file"])
    for name in names:
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise ArtifactError(
                f"{manifest_path} names the file {str(name)[:200]!r}, which is not a plain file name inside the "
                "artifact folder; the manifest was edited or damaged: rebuild the artifact"
            )


def write_artifact(out_dir: str | Path, files: dict[str, bytes | Path], manifest: dict[str, Any]) -> Artifact:
    """Write files and manifest into `out_dir` atomically (staged beside it, then swapped in).

    An existing `out_dir` is replaced only if it is empty or an earlier artifact, so a typo never
    deletes a user's folder.
    """
    out_dir = Path(out_dir)
    with staged_folder(out_dir, marker=MANIFEST, what="an artifact folder", error=ArtifactError) as staging:
        hashes = {}
        for name, content in sorted(files.items()):
            if Path(name).name != name or name == MANIFEST:
                raise ValueError(f"artifact file name {name!r} must be a plain file name other than {MANIFEST}")
            if isinstance(content, Path):
                shutil.copyfile(content, staging / name)
            else:
                (staging / name).write_bytes(content)
            hashes[name] = sha256_file(staging / name)
        manifest = {**manifest, "schema": SCHEMA, "version": VERSION, "files": hashes}
        (staging / MANIFEST).write_text(canonical_json(manifest) + "\n")
    return Artifact(out_dir, manifest)
