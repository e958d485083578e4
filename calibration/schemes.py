"""Quantization schemes: how a clipping range becomes a scale and zero point, and how weights are quantized.

Activations are per-tensor, either uint8 asymmetric (fastest for ONNX Runtime on x86: u8 activations
with s8 weights hit the VNNI kernels, and Relu folds into the quantizer when the zero point is 0),
int8 symmetric (what TensorRT's explicit quantization wants) or int8 asymmetric (TFLite). Weights
are int8 symmetric, per output channel by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.errors import CalibrationError


@dataclass(frozen=True)
class ActivationScheme:
    name: str
    dtype: str  # numpy name: uint8 | int8
    symmetric: bool

    @property
    def qmin(self) -> int:
        return int(np.iinfo(self.dtype).min)

    @property
    def qmax(self) -> int:
        return int(np.iinfo(self.dtype).max)


ACTIVATION_SCHEMES = {
    "uint8_asym": ActivationScheme("uint8_asym", "uint8", symmetric=False),
    "int8_sym": ActivationScheme("int8_sym", "int8", symmetric=True),
    "int8_asym": ActivationScheme("int8_asym", "int8", symmetric=False),
}
# Weights are symmetric: int8 uses [-127, 127] so that -x is always representable (TensorRT requires
# it). int7 stores int8 but uses only [-63, 63]: x86 CPUs without VNNI multiply u8 x s8 pairs with
# VPMADDUBSW, whose int16 sum saturates when two 255 x 127 products meet (measured here on an AVX2 EPYC:
# the first Conv of PaddleOCR det fell to 6 dB SQNR); 255 x 63 x 2 fits in int16.
WEIGHT_SCHEMES = ("int8_per_channel", "int8_per_tensor", "int7_per_channel", "int7_per_tensor")


def weight_qmax(scheme: str) -> int:
    _check_weight_scheme(scheme)
    return 63 if scheme.startswith("int7") else 127


def weight_per_channel(scheme: str) -> bool:
    _check_weight_scheme(scheme)
    return scheme.endswith("per_channel")


def per_tensor_variant(scheme: str) -> str:
    return scheme.replace("per_channel", "per_tensor")


def _check_weight_scheme(scheme: str) -> None:
    if scheme not in WEIGHT_SCHEMES:
        raise CalibrationError(f"unknown weight scheme {scheme!r}; use one of {', '.join(WEIGHT_SCHEMES)}")


def activation_scheme(name: str) -> ActivationScheme:
    try:
        return ACTIVATION_SCHEMES[name]
    except KeyError:
        known = ", ".join(ACTIVATION_SCHEMES)
        raise CalibrationError(f"unknown activation scheme {name!r}; use one of {known}") from None


def activation_qparams(lo: float, hi: float, scheme: ActivationScheme) -> tuple[float, int]:
    """Scale and zero point for a clipping range; the range always includes 0 so 0 is exact."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if scheme.symmetric:
        bound = max(-lo, hi)
        scale = bound / scheme.qmax if bound > 0 else 1.0
        return scale, 0
    span = hi - lo
    if span <= 0:
        return 1.0, 0
    scale = span / (scheme.qmax - scheme.qmin)
    zero_point = int(np.clip(round(scheme.qmin - lo / scale), scheme.qmin, scheme.qmax))
    return scale, zero_point


def quantize_weight(
    weight: np.ndarray, scheme: str = "int8_per_channel", axis: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric integer weights (int8 storage) and their scale(s): one per slice along `axis`, or one."""
    qmax = weight_qmax(scheme)
    weight = np.asarray(weight, dtype=np.float32)
    if weight_per_channel(scheme) and weight.ndim > 1:
        reduce_axes = tuple(i for i in range(weight.ndim) if i != axis)
        bound = np.abs(weight).max(axis=reduce_axes)
        shape = [1] * weight.ndim
        shape[axis] = -1
        scale = np.where(bound > 0, bound / qmax, 1.0).astype(np.float32)
        q = np.clip(np.round(weight / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
        return q, scale
    bound = float(np.abs(weight).max()) if weight.size else 0.0
    scale = np.float32(bound / qmax if bound > 0 else 1.0)
    q = np.clip(np.round(weight / scale), -qmax, qmax).astype(np.int8)
    return q, np.asarray(scale, dtype=np.float32)
