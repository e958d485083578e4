"""COCO-format box annotations for an image folder or a video, checked against the source and the model
before a run, and mAP@0.5:0.95 / mAP@0.5 / AR@100 of the returned detections after it (pycocotools).

Which source frame an annotated image is:
- image folder: `images[].file_name` is matched to the files the agent reads, in its order (sorted by name,
  class sub-folders in turn: `edgekit.runtime.sources`), by path relative to the folder, else by a base
  name that is unique in the folder;
- video: `images[].frame` (0-based position) when the entry has it, else `images[].id - 1` (ids from 1, as
  COCO numbers them).

Which model class a category is: by name when every category's name is one of the model's `class_names`,
else by its order in `categories` (the first category is class 0). Only annotated images are scored;
frames without an `images` entry are not, and an `images` entry without boxes is a frame where any
detection is a false positive.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EvaluationError
from edgekit.evaluate.detections import coco_detections, coco_stats, defined, detections_by_frame, detections_per_frame

FILE_SOURCES = ("images", "video")


@dataclass(frozen=True)
class SourceIndex:
    """What the agent will read, in its order: an image folder's files (relative paths), or a video
    (`frame_count` as its container reports it; None when unknown or the video is on the device only)."""

    kind: str
    where: str
    files: tuple[str, ...] = ()
    frame_count: int | None = None

    @classmethod
    def of(
        cls, kind: str, uri: str | int, *, on_host: bool = True, class_names: list[str] | None = None
    ) -> SourceIndex:
        if kind not in FILE_SOURCES:
            raise EvaluationError(
                f"annotations need a file source (an image folder or a video); a {kind} source has no fixed frames"
            )
        if not on_host:
            if kind == "images":
                raise EvaluationError(
                    "annotations for an image folder need the folder on this host (its sorted file names decide "
                    "which frame each image is): pass the folder without --source-on-device, it is pushed"
                )
            return cls(kind, str(uri))
        from edgekit.runtime.sources import SourceError, open_source

        try:
            with open_source(kind, uri, class_names=class_names) as source:
                if kind == "video":
                    return cls(kind, str(uri), frame_count=source.frame_count)
                files = tuple(Path(os.path.relpath(path, uri)).as_posix() for path, _ in source.items)
                return cls(kind, str(uri), files=files, frame_count=len(files))
        except SourceError as exc:
            raise EvaluationError(f"cannot read the source the annotations are for: {exc}") from exc


@dataclass(frozen=True)
class ModelClasses:
    """The classes a detector reports: its names (may be empty) and count (None when nothing says)."""

    names: list[str] = field(default_factory=list)
    count: int | None = None
    single: bool = False  # text detection: one class, every category maps to it

    @classmethod
    def of(cls, manifest: dict[str, Any], postprocess: dict[str, Any]) -> ModelClasses:
        """From the artifact's `class_names`, else the task's `num_classes`, else the decoder's output shape."""
        if postprocess.get("kind") == "text-detect":
            return cls(["text"], 1, single=True)
        names = [str(n) for n in manifest.get("class_names") or []]
        count = len(names) or postprocess.get("num_classes") or _classes_from_outputs(manifest, postprocess)
        return cls(names, count)


def _classes_from_outputs(manifest: dict[str, Any], postprocess: dict[str, Any]) -> int | None:
    shapes = [o.get("shape") or [] for o in manifest.get("outputs") or []]
    decoder = postprocess.get("decoder", "yolo-anchor-free")
    static = [s for s in shapes if s and all(isinstance(d, int) for d in s[1:])]
    if not static:
        return None
    if decoder == "yolo-anchor-free" and len(static[0]) == 3:
        return min(static[0][1:]) - 4  # [B, 4+nc, N] or [B, N, 4+nc]; N is the larger
    if decoder == "yolo-anchor-based":
        return static[0][-1] - 5
    if decoder == "ssd" and len(static) > 1:
        return static[1][-1]
    return None


@dataclass(frozen=True)
class CocoLabels:
    """Checked annotations in source terms: `ground_truth` is a COCO dataset whose image id is the source
    position + 1 and whose category id is the model class + 1; `mapped_by` is "name" or "order"."""

    path: Path
    ground_truth: dict[str, Any]
    positions: tuple[int, ...]
    mapping: dict[int, int]
    mapped_by: str

    def score(self, task_output: dict[str, Any] | None) -> dict[str, Any]:
        """mAP@0.5:0.95, mAP@0.5 and AR@100 of the detections on the annotated frames the run reached."""
        frames = detections_by_frame(task_output)
        seen = [p for p in self.positions if p in frames]
        if not seen:
            raise EvaluationError(
                f"none of the {len(self.positions)} frames annotated in {self.path} was run (the run reported "
                f"{len(frames)} frames): run the whole source, or more --frames"
            )
        stats = coco_stats(self.ground_truth, coco_detections(frames, seen), [p + 1 for p in seen])
        wanted = {p + 1 for p in seen}
        boxes = sum(1 for a in self.ground_truth["annotations"] if a["image_id"] in wanted)
        return {
            "map": defined(stats[0]),
            "map50": defined(stats[1]),
            "ar100": defined(stats[8]),
            "images": len(seen),
            "boxes": boxes,
            "detections_per_frame": detections_per_frame({p: frames[p] for p in seen}),
            "categories_by": self.mapped_by,
            "annotations": str(self.path),
            "computed_on": "host",
        }


def load_annotations(path: str | Path, source: SourceIndex, classes: ModelClasses) -> CocoLabels:
    """Read and check a COCO annotation file for `source` and a model with `classes`; EvaluationError names
    the first bad entry and what to do."""
    path = Path(path)
    data = _read(path)
    categories = _categories(data, path)
    positions = _image_positions(data, path, source)
    used: dict[int, int] = {}
    annotations = []
    for i, entry in enumerate(data["annotations"]):
        annotations.append(_annotation(entry, i, path, positions, categories))
        used[entry["category_id"]] = used.get(entry["category_id"], 0) + 1
    mapping, mapped_by = category_mapping(data["categories"], classes, used, path)
    for annotation in annotations:
        annotation["category_id"] = mapping[annotation["category_id"]] + 1
    ground_truth = {
        "images": [{"id": p + 1} for p in sorted(positions.values())],
        "categories": [{"id": c + 1, "name": str(c)} for c in sorted(set(mapping.values()))],
        "annotations": annotations,
    }
    return CocoLabels(path, ground_truth, tuple(sorted(positions.values())), mapping, mapped_by)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise EvaluationError(f"cannot read annotations {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"annotations {path} are not valid JSON ({exc}); give a COCO-format JSON file") from exc
    if not isinstance(data, dict):
        raise EvaluationError(f"annotations {path} must be a COCO JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise EvaluationError(f"annotations {path} have no {key!r} list; give a COCO-format JSON file")
    return data


def _categories(data: dict[str, Any], path: Path) -> set[int]:
    ids: set[int] = set()
    for i, entry in enumerate(data["categories"]):
        if not isinstance(entry, dict) or not _is_int(entry.get("id")) or not isinstance(entry.get("name"), str):
            raise EvaluationError(f"annotations {path}: categories[{i}] needs an integer 'id' and a 'name'")
        if entry["id"] in ids:
            raise EvaluationError(f"annotations {path}: category id {entry['id']} is listed twice")
        ids.add(entry["id"])
    return ids


def _image_positions(data: dict[str, Any], path: Path, source: SourceIndex) -> dict[int, int]:
    """{COCO image id: source position}."""
    by_name = _name_lookup(source.files)
    positions: dict[int, int] = {}
    taken: dict[int, int] = {}
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or not _is_int(entry.get("id")):
            raise EvaluationError(f"annotations {path}: images[{i}] needs an integer 'id'")
        position = _position(entry, i, path, source, by_name)
        if entry["id"] in positions:
            raise EvaluationError(f"annotations {path}: image id {entry['id']} is listed twice")
        if position in taken:
            raise EvaluationError(
                f"annotations {path}: images {taken[position]} and {entry['id']} are both source frame {position}"
            )
        positions[entry["id"]] = taken[position] = position
    if not positions:
        raise EvaluationError(f"annotations {path} list no images")
    return positions


def _name_lookup(files: tuple[str, ...]) -> dict[str, int]:
    """Relative paths, and base names that occur once, to positions."""
    lookup = {name: i for i, name in enumerate(files)}
    counts: dict[str, int] = {}
    for name in files:
        counts[Path(name).name] = counts.get(Path(name).name, 0) + 1
    for i, name in enumerate(files):
        if counts[Path(name).name] == 1:
            lookup.setdefault(Path(name).name, i)
    return lookup


def _position(entry: dict[str, Any], index: int, path: Path, source: SourceIndex, by_name: dict[str, int]) -> int:
    where = f"annotations {path}: images[{index}] (id {entry['id']})"
    if source.kind == "images":
        name = entry.get("file_name")
        if not isinstance(name, str):
            raise EvaluationError(f"{where} has no 'file_name'; image folders are matched by file name")
        key = Path(name).as_posix()
        found = by_name.get(key, by_name.get(Path(name).name))
        if found is None:
            sample = ", ".join(source.files[:3])
            raise EvaluationError(
                f"{where}: {name!r} is not in the source folder {source.where} ({len(source.files)} images, e.g. "
                f"{sample}); fix the file_name or pass the folder the annotations were made for"
            )
        return found
    frame = entry["frame"] if "frame" in entry else entry["id"] - 1
    if not _is_int(frame) or frame < 0:
        raise EvaluationError(f"{where}: frame {frame!r} is not a frame position (give 'frame' from 0 or ids from 1)")
    if source.frame_count is not None and frame >= source.frame_count:
        raise EvaluationError(
            f"{where}: frame {frame} is beyond the video {source.where}, which reports {source.frame_count} "
            "frames; check that the annotations belong to this video"
        )
    return frame


def _annotation(entry: Any, index: int, path: Path, positions: dict[int, int], categories: set[int]) -> dict[str, Any]:
    """A clean ground-truth entry (image id = position + 1; category id still COCO's)."""
    where = f"annotations {path}: annotations[{index}]"
    if not isinstance(entry, dict):
        raise EvaluationError(f"{where} is not an object")
    if entry.get("image_id") not in positions:
        raise EvaluationError(f"{where}: image_id {entry.get('image_id')!r} is not in 'images'; list that image")
    if entry.get("category_id") not in categories:
        raise EvaluationError(f"{where}: category_id {entry.get('category_id')!r} is not in 'categories'")
    box = entry.get("bbox")
    if not (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
        and box[2] > 0
        and box[3] > 0
    ):
        raise EvaluationError(
            f"{where}: bbox {box!r} is malformed; COCO boxes are [x, y, width, height] in pixels, width and "
            "height above 0"
        )
    return {
        "id": index + 1,  # COCOeval counts a match only for ids above 0
        "image_id": positions[entry["image_id"]] + 1,
        "category_id": entry["category_id"],
        "bbox": [float(v) for v in box],
        "area": float(entry.get("area") or box[2] * box[3]),
        "iscrowd": 1 if entry.get("iscrowd") else 0,
    }


def category_mapping(
    categories: list[dict[str, Any]], classes: ModelClasses, used: dict[int, int], path: Path
) -> tuple[dict[int, int], str]:
    """{COCO category id: model class index} and how it was made ("name" or "order"); a category that has
    boxes but no class in the model is an EvaluationError."""
    if classes.single:
        return {c["id"]: 0 for c in categories}, "single class"
    names = classes.names
    if names and all(c["name"] in names for c in categories):
        return {c["id"]: names.index(c["name"]) for c in categories}, "name"
    mapping: dict[int, int] = {}
    for index, category in enumerate(categories):
        named = names.index(category["name"]) if category["name"] in names else None
        if named is not None and named != index:
            raise EvaluationError(
                f"annotations {path}: category {category['name']!r} (id {category['id']}) is class {index} by "
                f"its order but class {named} by the model's class_names; name every category as the model "
                f"does ({', '.join(names[:8])}...) or list them in the model's class order"
            )
        if classes.count is not None and index >= classes.count:
            if used.get(category["id"]):
                raise EvaluationError(
                    f"annotations {path}: category {category['name']!r} (id {category['id']}, "
                    f"{used[category['id']]} boxes) is class {index} by its order, beyond the model's "
                    f"{classes.count} classes; drop it or check that the annotations belong to this model"
                )
            continue
        mapping[category["id"]] = index
    return mapping, "order"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
