"""The artifact manifest as the agent sees it: checked schema, a model path that stays inside the
artifact folder, and the inputs, outputs, preprocessing and class names. Python 3.8-compatible."""

import hashlib
import json
import os
from typing import Any, Dict, List, Optional

from .preprocess import PreprocessError, PreprocessSpec

MANIFEST_SCHEMA = "edgekit.artifact"
MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """An artifact folder whose manifest this agent cannot use."""


def canonical_json(data: Any) -> str:
    """The one serialisation that ids are computed over: sorted keys, no spaces."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def artifact_id(manifest_data: Dict[str, Any]) -> str:
    """sha256 of the canonical manifest JSON; covers every file because the manifest lists their hashes."""
    return hashlib.sha256(canonical_json(manifest_data).encode("utf-8")).hexdigest()


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Manifest(object):
    """A loaded `ARTIFACT/manifest.json`."""

    def __init__(self, artifact_dir: str, data: Dict[str, Any]) -> None:
        self.artifact_dir = artifact_dir
        self.data = data
        where = os.path.join(artifact_dir, "manifest.json")
        schema = data.get("schema")
        if schema != MANIFEST_SCHEMA:
            raise ManifestError("%s has schema %r; this agent reads %r" % (where, schema, MANIFEST_SCHEMA))
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ManifestError("%s version must be an integer >= 1, got %r" % (where, version))
        if version > MANIFEST_VERSION:
            raise ManifestError(
                "%s version %d is newer than this agent's (%d): update the agent on the device"
                % (where, version, MANIFEST_VERSION)
            )
        self.engine: Optional[str] = data.get("engine")
        self.target: Optional[str] = data.get("target")
        self.precision: Optional[str] = data.get("precision")
        self.model_path: str = self._model_path(where)
        self.inputs: List[Dict[str, Any]] = self._tensors("inputs", where)
        self.outputs: List[Dict[str, Any]] = self._tensors("outputs", where)
        self.preprocess: Optional[PreprocessSpec] = self._preprocess(where)
        names = data.get("class_names")
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise ManifestError("%s class_names must be a list of strings or null" % where)
        self.class_names: List[str] = list(names) if names else []

    @property
    def id(self) -> str:
        return artifact_id(self.data)

    def _model_path(self, where: str) -> str:
        model_file = self.data.get("model_file")
        if not isinstance(model_file, str) or not model_file:
            raise ManifestError("%s model_file must name the model file inside the artifact" % where)
        # refuse anything that could point outside the artifact: absolute paths, '..', drive letters
        parts = model_file.replace("\\", "/").split("/")
        if os.path.isabs(model_file) or ".." in parts or ":" in parts[0]:
            raise ManifestError(
                "%s model_file %r must be a relative path inside the artifact folder (no '..', not absolute)"
                % (where, model_file)
            )
        root = os.path.realpath(self.artifact_dir)
        path = os.path.realpath(os.path.join(root, *parts))
        if os.path.commonpath([root, path]) != root:
            raise ManifestError(
                "%s model_file %r resolves outside the artifact folder (a symlink?)" % (where, model_file)
            )
        if not os.path.isfile(path):
            raise ManifestError("model file %s named by %s does not exist: re-push the artifact" % (path, where))
        return path

    def _tensors(self, key: str, where: str) -> List[Dict[str, Any]]:
        tensors = self.data.get(key)
        if not isinstance(tensors, list) or not tensors:
            raise ManifestError("%s %s must be a non-empty list of {name, shape, dtype}" % (where, key))
        for position, tensor in enumerate(tensors):
            if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
                raise ManifestError("%s %s[%d] must be an object with a string name" % (where, key, position))
        return tensors

    def _preprocess(self, where: str) -> Optional[PreprocessSpec]:
        spec = self.data.get("preprocess")
        if spec is None:
            return None
        try:
            return PreprocessSpec.from_dict(spec)
        except PreprocessError as exc:
            raise ManifestError("%s preprocess: %s" % (where, exc)) from exc

    def verify_files(self) -> None:
        """Check every file listed under `files` against its sha256 (a half-pushed artifact fails here)."""
        files = self.data.get("files") or {}
        if not isinstance(files, dict):
            raise ManifestError("manifest files must map file names to sha256 digests")
        root = os.path.realpath(self.artifact_dir)
        for name in sorted(files):
            path = os.path.realpath(os.path.join(root, name))
            if os.path.commonpath([root, path]) != root:
                raise ManifestError("manifest files entry %r points outside the artifact folder" % name)
            if not os.path.isfile(path):
                raise ManifestError("artifact file %s listed in the manifest is missing: re-push the artifact" % path)
            actual = sha256_file(path)
            if actual != files[name]:
                raise ManifestError(
                    "artifact file %s has sha256 %s but the manifest says %s: the file is corrupt or was "
                    "changed after the build; re-push the artifact" % (path, actual, files[name])
                )


def load_manifest(artifact_dir: str, verify: bool = True) -> Manifest:
    """Read and check `artifact_dir/manifest.json`; with `verify`, also check the listed file hashes."""
    path = os.path.join(artifact_dir, "manifest.json")
    if not os.path.isdir(artifact_dir):
        raise ManifestError("artifact folder %s does not exist: push the artifact or fix artifact_dir" % artifact_dir)
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise ManifestError("cannot read %s: %s" % (path, exc.strerror or exc)) from exc
    except ValueError as exc:
        raise ManifestError("%s is not valid JSON: %s" % (path, exc)) from exc
    if not isinstance(data, dict):
        raise ManifestError("%s must hold a JSON object" % path)
    manifest = Manifest(artifact_dir, data)
    if verify:
        manifest.verify_files()
    return manifest
