"""QuantSpec: the one source of truth for every scale and zero point, read by every target.

Written by calibration (and later by QAT), versioned JSON. Per tensor: dtype, scale(s), zero
point(s), axis for per-channel, the observer and its settings, the clipping range it chose and the
range it observed. Per node: precision overrides (kept float by sensitivity analysis or the user).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import QuantSpecError
from edgekit.hashing import canonical_json, sha256_json

SCHEMA = "edgekit.quant_spec"
VERSION = 1


@dataclass
class TensorQuant:
    """How one tensor is quantized: q = clamp(round(x / scale) + zero_point)."""

    # "activation" | "weight" | "bias" | "constant" (an Add/Mul operand) | "output" (a graph output's range;
    # QDQ writers leave it float)
    kind: str
    dtype: str  # "uint8" | "int8" | "int32"
    scale: float | list[float]
    zero_point: int | list[int]
    axis: int | None = None  # channel axis for per-channel scales
    observer: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    range: tuple[float, float] | None = None  # the clipping range the observer chose
    observed: tuple[float, float] | None = None  # the min and max it saw

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind,
            "dtype": self.dtype,
            "scale": self.scale,
            "zero_point": self.zero_point,
            "axis": self.axis,
        }
        if self.observer:
            data["observer"] = self.observer
            data["settings"] = self.settings
        if self.range is not None:
            data["range"] = [float(v) for v in self.range]
        if self.observed is not None:
            data["observed"] = [float(v) for v in self.observed]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorQuant:
        return cls(
            kind=data["kind"],
            dtype=data["dtype"],
            scale=data["scale"],
            zero_point=data["zero_point"],
            axis=data.get("axis"),
            observer=data.get("observer"),
            settings=data.get("settings", {}),
            range=tuple(data["range"]) if data.get("range") else None,
            observed=tuple(data["observed"]) if data.get("observed") else None,
        )


@dataclass
class QuantSpec:
    source_model_sha256: str
    scheme: dict[str, str]
    tensors: dict[str, TensorQuant] = field(default_factory=dict)
    # node name -> {"precision", "reason"} and, for a float node that reads its inputs after their own
    # quantizers (a mixed-range concat, policy "branches"), "inputs": "quantized"
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)  # observer, settings, samples, data source
    created_by: str = "calibration"
    # weight changes made before quantizing (equalization scales, bias corrections), replayed by targets
    transforms: list[dict[str, Any]] = field(default_factory=list)

    # -- overrides ------------------------------------------------------------------------------

    def keep_float(self, node_name: str, reason: str, *, inputs_quantized: bool = False) -> None:
        """Run `node_name` in float. With `inputs_quantized` its inputs keep their quantizers (each on its own
        grid) and the node computes on the dequantized values; else they are quantized only for other readers."""
        self.nodes[node_name] = {"precision": "float", "reason": reason}
        if inputs_quantized:
            self.nodes[node_name]["inputs"] = "quantized"

    @property
    def float_nodes(self) -> set[str]:
        return {name for name, o in self.nodes.items() if o.get("precision") == "float"}

    @property
    def float_nodes_reading_quantized(self) -> set[str]:
        """Float nodes whose inputs still carry their quantizers."""
        return {name for name in self.float_nodes if self.nodes[name].get("inputs") == "quantized"}

    # -- identity and checks ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "created_by": self.created_by,
            "source_model_sha256": self.source_model_sha256,
            "scheme": self.scheme,
            "calibration": self.calibration,
            "tensors": {name: t.to_dict() for name, t in sorted(self.tensors.items())},
            "nodes": dict(sorted(self.nodes.items())),
            "transforms": self.transforms,
        }

    @property
    def sha256(self) -> str:
        return sha256_json(self.to_dict())

    def check_model(self, model_sha256: str, label: str = "the model") -> None:
        if model_sha256 != self.source_model_sha256:
            raise QuantSpecError(
                f"this QuantSpec was computed for model {self.source_model_sha256[:12]}, not for {label} "
                f"({model_sha256[:12]}); calibrate this model again (edgekit quantize)"
            )

    # -- files --------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(json.loads(canonical_json(self.to_dict())), indent=1) + "\n")
        tmp.replace(path)  # never leave a half-written spec behind
        return path

    @classmethod
    def load(cls, path: str | Path) -> QuantSpec:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise QuantSpecError(f"QuantSpec {path} does not exist; create one with `edgekit quantize`") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise QuantSpecError(f"QuantSpec {path} is not readable JSON ({exc})") from exc
        return cls.from_dict(data, label=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], label: str = "QuantSpec") -> QuantSpec:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise QuantSpecError(f"{label} is not a QuantSpec (schema {SCHEMA!r} expected)")
        if data.get("version", 0) > VERSION:
            raise QuantSpecError(f"{label} has version {data.get('version')}, newer than this edgekit ({VERSION})")
        try:
            return cls(
                source_model_sha256=data["source_model_sha256"],
                scheme=data["scheme"],
                tensors={name: TensorQuant.from_dict(t) for name, t in data["tensors"].items()},
                nodes=data.get("nodes", {}),
                calibration=data.get("calibration", {}),
                created_by=data.get("created_by", "calibration"),
                transforms=data.get("transforms", []),
            )
        except (KeyError, TypeError) as exc:
            raise QuantSpecError(f"{label} lacks or mangles field {exc}; regenerate it") from exc

    # -- reading ---------------------------------------------------------------------------------

    def summary(self) -> str:
        """A few readable lines: scheme, observer, counts, and the nodes kept in float."""
        kinds: dict[str, int] = {}
        for t in self.tensors.values():
            kinds[t.kind] = kinds.get(t.kind, 0) + 1
        lines = [
            f"QuantSpec v{VERSION} for model {self.source_model_sha256[:12]} ({self.created_by})",
            f"  scheme: activations {self.scheme.get('activations')}, weights {self.scheme.get('weights')}",
        ]
        if self.calibration:
            lines.append(
                f"  observer: {self.calibration.get('observer')} {self.calibration.get('settings', {})} "
                f"over {self.calibration.get('samples')} samples"
            )
        lines.append("  tensors: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
        if self.transforms:
            lines.append("  transforms: " + ", ".join(t["kind"] for t in self.transforms))
        floats = sorted(self.float_nodes)
        lines.append(f"  kept float: {', '.join(floats) if floats else 'none'}")
        return "\n".join(lines)
