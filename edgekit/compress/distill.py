"""Knowledge distillation building blocks for the user's own training loop: the Hinton loss, feature
matching through forward hooks, and a teacher that can be any ONNX model run by ONNX Runtime.

Typical loop::

    distiller = Distiller(student, teacher, temperature=4.0, alpha=0.5, features={"layer3": "layer3"})
    distiller.prepare(example_batch)  # creates the feature adapters before the optimizer is built
    optimizer = torch.optim.SGD([*student.parameters(), *distiller.parameters()], lr=0.1)
    for inputs, targets in loader:
        loss = distiller.loss(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekit.errors import CompressError, CompressStateError, ModelError

__all__ = ["Distiller", "FeatureDistiller", "OnnxTeacher", "kd_loss"]


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    temperature: float = 4.0,
    alpha: float = 0.5,
) -> Tensor:
    """Hinton distillation loss: alpha * CE(student, targets) + (1 - alpha) * T^2 * KL(teacher_T || student_T).

    `student_logits` and `teacher_logits` are (N, C); `targets` are class indices (N,). The teacher logits
    are detached, so the gradient reaches the student only. The T^2 factor keeps the soft term's gradient
    on the same scale as the hard term's whatever the temperature.
    """
    if temperature <= 0:
        raise CompressError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise CompressError(f"alpha must be in [0, 1] (the weight of the hard-label term), got {alpha}")
    if student_logits.dim() != 2:
        raise CompressError(f"student logits must be (batch, classes), got shape {tuple(student_logits.shape)}")
    if teacher_logits.shape != student_logits.shape:
        raise CompressError(
            f"teacher logits {tuple(teacher_logits.shape)} and student logits {tuple(student_logits.shape)} "
            "differ in shape; both must be (batch, classes) over the same classes in the same order"
        )
    if targets.shape != student_logits.shape[:1]:
        raise CompressError(
            f"targets {tuple(targets.shape)} must be class indices of shape ({student_logits.shape[0]},) "
            f"for logits {tuple(student_logits.shape)}"
        )
    teacher_logits = teacher_logits.detach().to(student_logits.dtype)
    hard = F.cross_entropy(student_logits, targets)
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
    )
    return alpha * hard + (1.0 - alpha) * temperature**2 * soft


def _module_by_name(model: nn.Module, name: str, role: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        known = [n for n in modules if n]
        shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        raise CompressError(f"{role} has no module named {name!r}; its modules are: {shown}")
    return modules[name]


def _make_adapter(student_feature: Tensor, teacher_feature: Tensor) -> nn.Module:
    """A 1x1 convolution (or linear layer) mapping student channels (dim 1) to teacher channels."""
    s, t = student_feature.shape[1], teacher_feature.shape[1]
    rank = student_feature.dim()
    if rank == 4:
        adapter: nn.Module = nn.Conv2d(s, t, kernel_size=1, bias=False)
    elif rank == 3:
        adapter = nn.Conv1d(s, t, kernel_size=1, bias=False)
    elif rank == 2:
        adapter = nn.Linear(s, t, bias=False)
    else:
        raise CompressError(
            f"cannot adapt a student feature of shape {tuple(student_feature.shape)} to "
            f"{tuple(teacher_feature.shape)}; features must be (N, C), (N, C, L) or (N, C, H, W)"
        )
    return adapter.to(device=student_feature.device, dtype=student_feature.dtype)


class FeatureDistiller(nn.Module):
    """Match named intermediate features of the student to the teacher's with an MSE loss.

    `pairs` maps student module names to teacher module names (as in `model.named_modules()`). Forward
    hooks capture each module's output on every forward pass; `loss()` then compares the pairs. Where the
    channel widths differ, a 1x1 convolution (a linear layer for (N, C) features) on the student side maps
    them; it is created on the first `loss()` (or by `prepare()`) and its weights are this object's
    `parameters()`, which the user adds to the optimizer. Where spatial sizes differ, the student feature
    is interpolated to the teacher's size. Call `remove()` to take the hooks off both models.

    The student and the teacher are not submodules: `parameters()` and `state_dict()` hold the adapters only.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs: Mapping[str, str], *, adapters: bool = True):
        super().__init__()
        if not isinstance(teacher, nn.Module):
            raise TypeError(
                f"FeatureDistiller needs a torch teacher to hook intermediate features, got {type(teacher).__name__}; "
                "an ONNX teacher can only be distilled through its logits"
            )
        if not pairs:
            raise CompressError("pairs is empty; map at least one student module name to a teacher module name")
        self._models = (student, teacher)  # a tuple, so nn.Module does not register them as submodules
        self.pairs = dict(pairs)
        self.use_adapters = adapters
        self.adapters = nn.ModuleDict()
        self._student_features: dict[str, Tensor] = {}
        self._teacher_features: dict[str, Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for s_name, t_name in self.pairs.items():
            s_mod = _module_by_name(student, s_name, "the student")
            t_mod = _module_by_name(teacher, t_name, "the teacher")
            self._handles.append(s_mod.register_forward_hook(self._capture(self._student_features, s_name)))
            self._handles.append(t_mod.register_forward_hook(self._capture(self._teacher_features, t_name)))

    @staticmethod
    def _capture(store: dict[str, Tensor], name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            store[name] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    @staticmethod
    def _key(student_name: str) -> str:
        # ModuleDict keys cannot contain dots; module names do
        return student_name.replace(".", "__") or "__root__"

    def _match(self, s_name: str, s_feat: Tensor, t_feat: Tensor) -> Tensor:
        if s_feat.dim() != t_feat.dim():
            raise CompressError(
                f"student feature {s_name!r} {tuple(s_feat.shape)} and teacher feature {self.pairs[s_name]!r} "
                f"{tuple(t_feat.shape)} differ in rank; pair modules whose outputs have the same layout"
            )
        key = self._key(s_name)
        if s_feat.shape[1] != t_feat.shape[1] or key in self.adapters:
            if key not in self.adapters:
                if not self.use_adapters:
                    raise CompressError(
                        f"student feature {s_name!r} has {s_feat.shape[1]} channels and teacher feature "
                        f"{self.pairs[s_name]!r} has {t_feat.shape[1]}; pass adapters=True to learn a mapping"
                    )
                self.adapters[key] = _make_adapter(s_feat, t_feat)
            s_feat = self.adapters[key](s_feat)
        if s_feat.shape[2:] != t_feat.shape[2:]:
            mode = {3: "linear", 4: "bilinear"}.get(s_feat.dim())
            if mode is None:
                raise CompressError(
                    f"cannot resize student feature {s_name!r} {tuple(s_feat.shape)} to {tuple(t_feat.shape)}"
                )
            s_feat = F.interpolate(s_feat, size=t_feat.shape[2:], mode=mode, align_corners=False)
        return F.mse_loss(s_feat, t_feat.detach().to(s_feat.dtype))

    def loss(self) -> Tensor:
        """Mean MSE over the pairs between (adapted) student and teacher features of the last forward passes."""
        missing = [s for s in self.pairs if s not in self._student_features] + [
            t for t in self.pairs.values() if t not in self._teacher_features
        ]
        if missing:
            raise CompressStateError(
                f"no captured features for {missing}; run the student and the teacher forward before loss() "
                "(features are consumed by each loss() call)"
            )
        terms = [
            self._match(s_name, self._student_features[s_name], self._teacher_features[t_name])
            for s_name, t_name in self.pairs.items()
        ]
        self.clear()
        return torch.stack(terms).mean()

    @torch.no_grad()
    def prepare(self, *inputs: Any) -> None:
        """Run both models once on an example batch so the adapters exist before the optimizer is built."""
        student, teacher = self._models
        student_mode, teacher_mode = student.training, teacher.training
        student.eval()
        teacher.eval()
        try:
            teacher(*inputs)
            student(*inputs)
            self.loss()
        finally:
            student.train(student_mode)
            teacher.train(teacher_mode)

    def clear(self) -> None:
        """Drop the captured features (they hold activations, and so memory)."""
        self._student_features.clear()
        self._teacher_features.clear()

    def remove(self) -> None:
        """Take the forward hooks off the student and the teacher."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()


_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


class OnnxTeacher:
    """A teacher that is any ONNX model: runs it with ONNX Runtime on a torch batch, returns torch outputs.

    `source` is a path to an .onnx file, the serialised bytes, an `onnx.ModelProto` or an `edgekit.model.Model`.
    Outputs come back as float tensors on the input's device with no gradient; the first graph output is
    returned (set `output` to pick another by name).
    """

    def __init__(self, source: Any, *, output: str | None = None, providers: list[str] | None = None):
        import onnxruntime as ort

        if hasattr(source, "to_bytes"):
            data: bytes | str = source.to_bytes()
        elif isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        elif isinstance(source, (str, Path)):
            if not Path(source).is_file():
                raise ModelError(f"ONNX teacher file {source} does not exist; pass the path of an .onnx file")
            data = str(source)
        elif hasattr(source, "SerializeToString"):
            data = source.SerializeToString()
        else:
            raise TypeError(
                f"OnnxTeacher takes a path, bytes, onnx.ModelProto or edgekit Model, got {type(source).__name__}"
            )
        try:
            self.session = ort.InferenceSession(data, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for bad models
            raise ModelError(f"ONNX Runtime could not load the teacher model: {exc}") from exc
        self.inputs = self.session.get_inputs()
        names = [o.name for o in self.session.get_outputs()]
        if output is not None and output not in names:
            raise CompressError(f"teacher has no output {output!r}; its outputs are {names}")
        self.output = output or names[0]

    def __call__(self, *inputs: Tensor) -> Tensor:
        if len(inputs) != len(self.inputs):
            raise CompressError(
                f"ONNX teacher takes {len(self.inputs)} input(s) {[i.name for i in self.inputs]}, got {len(inputs)}"
            )
        feed = {}
        for spec, tensor in zip(self.inputs, inputs, strict=True):
            dtype = _ORT_TO_NUMPY.get(spec.type, np.float32)
            tensor = tensor.detach().cpu()
            if tensor.is_floating_point():
                tensor = tensor.float()  # numpy has no bfloat16; ORT gets the dtype its graph declares below
            feed[spec.name] = tensor.numpy().astype(dtype, copy=False)
        (result,) = self.session.run([self.output], feed)
        out = torch.from_numpy(np.ascontiguousarray(result))
        if out.is_floating_point():
            out = out.float()
        return out.to(inputs[0].device)


class Distiller:
    """Student + teacher + loss settings in one object: `loss(inputs, targets)` is the whole distillation loss.

    The teacher is a torch module (put in eval mode and run under no_grad) or any callable returning
    logits, such as `OnnxTeacher`. `features` optionally maps student module names to teacher module names
    for feature matching (needs a torch teacher); its loss is added with weight `feature_weight`.
    The adapters of the feature term are `parameters()`: add them to the optimizer (after `prepare()`).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | Callable[..., Tensor],
        *,
        temperature: float = 4.0,
        alpha: float = 0.5,
        features: Mapping[str, str] | FeatureDistiller | None = None,
        feature_weight: float = 1.0,
    ):
        if temperature <= 0:
            raise CompressError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise CompressError(f"alpha must be in [0, 1], got {alpha}")
        self.student = student
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha
        self.feature_weight = feature_weight
        if isinstance(teacher, nn.Module):
            teacher.eval()
        if features is None or isinstance(features, FeatureDistiller):
            self.features = features
        else:
            if not isinstance(teacher, nn.Module):
                raise TypeError("feature distillation needs a torch teacher; an ONNX teacher only gives logits")
            self.features = FeatureDistiller(student, teacher, features)
        self.last_terms: dict[str, float] = {}

    def teacher_logits(self, *inputs: Any) -> Tensor:
        with torch.no_grad():
            if isinstance(self.teacher, nn.Module) and self.teacher.training:
                self.teacher.eval()
            return self.teacher(*inputs)

    def loss(self, inputs: Any, targets: Tensor) -> Tensor:
        """Run teacher (no grad) and student on `inputs` (a tensor or a tuple of tensors) and return the loss."""
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        teacher_logits = self.teacher_logits(*args)
        student_logits = self.student(*args)
        total = kd_loss(student_logits, teacher_logits, targets, temperature=self.temperature, alpha=self.alpha)
        self.last_terms = {"kd": float(total.detach())}
        if self.features is not None:
            feature_loss = self.features.loss()
            self.last_terms["features"] = float(feature_loss.detach())
            total = total + self.feature_weight * feature_loss
        return total

    def prepare(self, *inputs: Any) -> None:
        """Create the feature adapters from an example batch (no-op without feature pairs)."""
        if self.features is not None:
            self.features.prepare(*inputs)

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters besides the student's: the feature adapters."""
        return list(self.features.parameters()) if self.features is not None else []
