"""A stored detection run's boxes drawn on its frames, for the HTML report (PNG embedded as base64).

The frames are read again from the source path in the stored plan; a source that is not on this host
(a camera, a file on the device, a folder since moved) gives a note instead of pictures.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.evaluate.detections import BOX_TASKS

MAX_VIDEO_SEEK = 2000  # frames read to reach a video frame; later frames are not drawn
PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72)]


def detection_frames_html(run: Any, limit: int = 2, width: int = 480) -> str:
    """Up to `limit` frames of `run` (a StoredRun) with its detections drawn, as <figure> elements; the
    frames with most detections are chosen. Empty for runs without boxes."""
    output = run.result.get("task_output")
    if not isinstance(output, dict) or output.get("kind") not in BOX_TASKS or not output.get("frames"):
        return ""
    source = run.plan.get("source") or {}
    uri = source.get("uri")
    if source.get("kind") not in ("images", "video") or not Path(str(uri)).exists():
        return (
            f"<p class='note'>frames with boxes not shown: the source {html.escape(str(uri))} is not on this host</p>"
        )
    entries = _chosen(output, limit, source.get("kind"))
    try:
        figures = _figures(run, entries, width)
    except Exception as exc:  # an unreadable or changed source costs the pictures, not the report
        return f"<p class='note'>frames with boxes not shown: {html.escape(str(exc))}</p>"
    return "<h3>detections on frames</h3>" + "".join(figures) if figures else ""


def _figures(run: Any, entries: list[dict[str, Any]], width: int) -> list[str]:
    source = run.plan["source"]
    frames = _read_frames(source["kind"], str(source["uri"]), [e["frame"] for e in entries], run.manifest)
    names = [str(n) for n in run.manifest.get("class_names") or []]
    figures = []
    for entry in entries:
        frame = frames.get(entry["frame"])
        if frame is None:
            continue
        png = _encode(_drawn(frame, entry, names, width))
        count = len(entry.get("boxes") or entry.get("polygons") or [])
        figures.append(
            f"<figure><img alt='frame {entry['frame']} with its detections' "
            f"src='data:image/png;base64,{png}'><figcaption>frame {entry['frame']}: {count} detection(s)"
            "</figcaption></figure>"
        )
    return figures


def _chosen(output: dict[str, Any], limit: int, kind: str | None) -> list[dict[str, Any]]:
    frames = [f for f in output["frames"] if isinstance(f, dict) and isinstance(f.get("frame"), int)]
    if kind == "video":
        frames = [f for f in frames if f["frame"] < MAX_VIDEO_SEEK]
    ranked = sorted(frames, key=lambda f: (-len(f.get("boxes") or f.get("polygons") or []), f["frame"]))
    return sorted(ranked[:limit], key=lambda f: f["frame"])


def _read_frames(kind: str, uri: str, positions: list[int], manifest: dict[str, Any]) -> dict[int, np.ndarray]:
    """{position: BGR frame}, read as the agent read them (edgekit.runtime.sources decides the order)."""
    from edgekit.runtime.sources import open_source

    wanted = set(positions)
    frames: dict[int, np.ndarray] = {}
    with open_source(kind, uri, class_names=manifest.get("class_names")) as source:
        if kind == "images":
            import cv2

            for position in wanted:
                if position < len(source.items):
                    frames[position] = cv2.imread(source.items[position][0], cv2.IMREAD_COLOR)
            return {p: f for p, f in frames.items() if f is not None}
        for frame, _ in source:
            if source.position in wanted:
                frames[source.position] = frame
            if len(frames) == len(wanted) or source.position >= MAX_VIDEO_SEEK:
                break
    return frames


def _drawn(frame: np.ndarray, entry: dict[str, Any], names: list[str], width: int) -> np.ndarray:
    import cv2

    scale = width / frame.shape[1]
    image = cv2.resize(frame, (width, max(1, round(frame.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    thickness = max(1, width // 320)
    for box in entry.get("boxes") or []:
        x1, y1, x2, y2, score, cls = box[:6]
        colour = PALETTE[int(cls) % len(PALETTE)]
        top_left, bottom_right = (round(x1 * scale), round(y1 * scale)), (round(x2 * scale), round(y2 * scale))
        cv2.rectangle(image, top_left, bottom_right, colour, thickness)
        name = names[int(cls)] if 0 <= int(cls) < len(names) else str(int(cls))
        _label(image, f"{name} {score:.2f}", top_left, colour)
    for points, score in entry.get("polygons") or []:
        outline = np.round(np.asarray(points, dtype=np.float64).reshape(-1, 2) * scale).astype(np.int32)
        cv2.polylines(image, [outline], True, PALETTE[0], thickness)
        _label(image, f"{score:.2f}", (int(outline[:, 0].min()), int(outline[:, 1].min())), PALETTE[0])
    return image


def _label(image: np.ndarray, text: str, corner: tuple[int, int], colour: tuple[int, int, int]) -> None:
    import cv2

    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
    x, y = max(corner[0], 0), max(corner[1], h + 4)
    cv2.rectangle(image, (x, y - h - 4), (x + w + 2, y), colour, -1)
    cv2.putText(image, text, (x + 1, y - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)


def _encode(image: np.ndarray) -> str:
    import cv2

    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("OpenCV could not encode the frame as PNG")
    return base64.b64encode(data.tobytes()).decode("ascii")
