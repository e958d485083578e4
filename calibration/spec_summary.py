"""What a QuantSpec kept float and why, in the words every target's manifest and report use."""

from __future__ import annotations

from typing import Any

from edgekit.calibration import mixed_range, output_tail
from edgekit.calibration.quant_spec import QuantSpec


def head_lines(spec: QuantSpec) -> list[str]:
    """One line per mixed-range concat at the outputs and one for the output tail (a detector's decoding)."""
    return mixed_range.spec_lines(spec) + output_tail.spec_lines(spec)


def quantization_summary(spec: QuantSpec) -> dict[str, Any]:
    """The manifest's "quantization" block: scheme, observer, the nodes kept float and the lines saying why."""
    return {
        "scheme": spec.scheme,
        "observer": spec.calibration.get("observer"),
        "kept_float": sorted(spec.float_nodes),
        "mixed_range": mixed_range.spec_lines(spec),
        "output_tail": output_tail.spec_lines(spec),
    }
