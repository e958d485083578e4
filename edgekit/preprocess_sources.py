"""Where each preprocessing value of a model comes from, and the one order every command resolves them in.

Per key, the first of: the user's --preprocess, edgekit's own metadata in the ONNX file, an exporter's
metadata (Ultralytics, YOLOv5: edgekit/exporter_metadata.py), what the model's input says (its size when
fixed, channels, layout, dtype), else PreprocessSpec's default. Keys are merged, so `--preprocess
'{"resize_mode": "letterbox"}'` changes only that key and every other value keeps its source.
"""

from __future__ import annotations

from typing import Any

from edgekit.runtime.preprocess import (
    COLOR_ORDERS,
    DTYPES,
    INTERPOLATIONS,
    LAYOUTS,
    RESIZE_MODES,
    PreprocessError,
    PreprocessSpec,
)

GIVEN = "given"
EDGEKIT_METADATA = "edgekit metadata"
FROM_INPUT = "the model's input"  # size, channels, layout and dtype read off the input tensor
DEFAULT = "default"

LETTERBOX_KEYS = ("pad_value", "stride")
INPUT_KEYS = ("resize", "color", "scale", "layout", "dtype")  # what guess_preprocess reads off the input

# every key a spec takes, with its values where they are enumerated (--help, errors and README say the same)
KEY_VALUES: dict[str, str] = {
    "resize": "[height, width] (letterbox/stretch) or [shorter side] (shorter_side)",
    "resize_mode": " | ".join(RESIZE_MODES),
    "crop": "[height, width] centre crop after the resize",
    "color": " | ".join(COLOR_ORDERS),
    "scale": "a factor on the pixels, e.g. 0.00392157 (1/255)",
    "mean": "one value or one per channel, after scale",
    "std": "one value or one per channel",
    "layout": " | ".join(LAYOUTS),
    "dtype": " | ".join(DTYPES),
    "interpolation": " | ".join(INTERPOLATIONS),
    "pad_value": "letterbox padding, one value or one per channel (default 114)",
    "stride": "letterbox: pad only to a multiple of this (dynamic-shape models)",
}


def enumerated_help() -> str:
    """The enumerated keys and their values, for --help."""
    keys = ("resize_mode", "color", "layout", "dtype", "interpolation")
    return "; ".join(f"{key}: {KEY_VALUES[key]}" for key in keys)


def exporter_keys(spec: PreprocessSpec | None) -> dict[str, Any] | None:
    """The values an exporter's metadata set (its layout and dtype are the input's)."""
    from edgekit.exporter_metadata import PREPROCESS_KEYS

    if spec is None:
        return None
    return {k: v for k, v in spec.to_dict().items() if k in PREPROCESS_KEYS}


def input_keys(spec: PreprocessSpec | None) -> dict[str, Any] | None:
    """The values the model's input tensor says (a dynamic size says none)."""
    if spec is None:
        return None
    data = spec.to_dict()
    said = {k: data[k] for k in INPUT_KEYS if data.get(k) is not None}
    if said.get("color") == "RGB":  # three channels do not say their order (PaddleOCR's are BGR): a default
        del said["color"]
    return said


def resolve(layers: list[tuple[dict[str, Any] | None, str]]) -> tuple[PreprocessSpec | None, dict[str, str]]:
    """The spec from `layers` (values, source), first layer first per key, and each key's source; None when
    no layer has a value. Letterbox-only keys are dropped unless the resolved mode is letterbox."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for values, source in layers:
        for key, value in (values or {}).items():
            if key not in merged:
                merged[key], sources[key] = value, source
    if not merged:
        return None, {}
    if merged.get("resize_mode", "stretch") != "letterbox":
        for key in LETTERBOX_KEYS:
            if sources.get(key) != GIVEN:
                merged.pop(key, None)
    spec = PreprocessSpec.from_dict(merged)
    return spec, {key: sources.get(key, DEFAULT) for key in spec.to_dict()}


def override(
    spec: PreprocessSpec | None, sources: dict[str, str], values: dict[str, Any]
) -> tuple[PreprocessSpec, dict[str, str]]:
    """`values` (the user's --preprocess) laid over `spec` key by key; the other keys keep their sources.
    A bad value raises PreprocessError naming the key and the values it takes."""
    current = spec.to_dict() if spec is not None else {}
    layers = [(values, GIVEN), *((({k: v}, sources.get(k, DEFAULT)) for k, v in current.items()))]
    new, new_sources = resolve(layers)
    if new is None:
        raise PreprocessError("--preprocess is empty: give at least one key, e.g. '{\"resize\": [640, 640]}'")
    return new, new_sources


def source_text(source: str) -> str:
    """A value's source in words, for `edgekit inspect`."""
    if source == GIVEN:
        return "given with --preprocess"
    if source == EDGEKIT_METADATA:
        return "from the model's metadata"
    if source == FROM_INPUT:
        return "from the model's input"
    if source == DEFAULT:
        return "default: the model carries none — set it with --preprocess"
    exporter = source.replace(" metadata", "")
    names = {"ultralytics": "Ultralytics'", "yolov5": "YOLOv5's"}
    return f"from {names.get(exporter, exporter)} metadata"
