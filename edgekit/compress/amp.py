"""Mixed-precision training: a hand-written dynamic loss scaler and a trainer that runs one autocast step.

Precision choices:

- FP16 (the default on CUDA) has 5 exponent bits, so small gradients underflow to zero. The loss is
  multiplied by a large scale before `backward()`, the gradients divided by it before the optimizer step;
  when the scale is too large the gradients overflow to inf/NaN, the step is skipped and the scale halved.
  After `growth_interval` clean steps the scale is doubled again to probe for headroom.
- BF16 (the default elsewhere, e.g. on CPU) has FP32's 8 exponent bits, so gradients do not underflow and
  no loss scaling is needed; the trainer runs without a scaler (`scale` is reported as 1.0).
- Master weights stay FP32 in both cases: `torch.autocast` casts per operation, the parameters, their
  gradients and the optimizer state are never converted.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from edgekit.errors import CompressError, NonFiniteLossError, RunError

__all__ = ["DynamicLossScaler", "MixedPrecisionTrainer", "NonFiniteLossError"]


def _grads(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


class DynamicLossScaler:
    """Dynamic loss scaling for FP16 training, by hand (the mechanism of `torch.amp.GradScaler`).

    Per step: `scale(loss).backward()`, then `step(optimizer)`, which unscales the gradients, skips the
    optimizer step and multiplies the scale by `backoff_factor` when any gradient is inf/NaN, and otherwise
    steps and, after `growth_interval` consecutive clean steps, multiplies the scale by `growth_factor`.
    Call `unscale_and_check(optimizer)` yourself before `step` to clip gradients at their true size; `step`
    then reuses its verdict. One optimizer per scaler.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ):
        if not (init_scale > 0 and math.isfinite(init_scale)):
            raise CompressError(f"init_scale must be a finite number > 0, got {init_scale}")
        if growth_factor <= 1.0:
            raise CompressError(f"growth_factor must be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise CompressError(f"backoff_factor must be in (0, 1), got {backoff_factor}")
        if int(growth_interval) != growth_interval or growth_interval < 1:
            raise CompressError(f"growth_interval must be a whole number >= 1, got {growth_interval}")
        self._scale = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self._good_steps = 0
        self._unscaled: bool | None = None  # verdict of unscale_and_check for the pending step

    def get_scale(self) -> float:
        return self._scale

    @property
    def good_steps(self) -> int:
        """Clean steps since the scale last changed."""
        return self._good_steps

    def scale(self, loss: Tensor) -> Tensor:
        """The loss multiplied by the current scale; call `.backward()` on the result."""
        return loss * self._scale

    @torch.no_grad()
    def unscale_and_check(self, optimizer: torch.optim.Optimizer) -> bool:
        """Divide every gradient of `optimizer`'s parameters by the scale; False when any is inf or NaN.

        Idempotent until the next `step`: a second call neither divides again nor changes the verdict.
        """
        if self._unscaled is not None:
            return self._unscaled
        finite = True
        for grad in _grads(optimizer):
            values = grad.coalesce()._values() if grad.is_sparse else grad
            values.div_(self._scale)
            if finite and not bool(torch.isfinite(values).all()):
                finite = False
        self._unscaled = finite
        return finite

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale (if not done), step the optimizer unless a gradient overflowed, update the scale.

        Returns True when the optimizer stepped, False when the step was skipped.
        """
        ok = self.unscale_and_check(optimizer)
        self._unscaled = None
        if ok:
            optimizer.step()
            self._good_steps += 1
            if self._good_steps >= self.growth_interval:
                self._scale *= self.growth_factor
                self._good_steps = 0
        else:
            self._scale *= self.backoff_factor
            self._good_steps = 0
            if self._scale < torch.finfo(torch.float32).tiny:
                raise RunError(
                    "the loss scale underflowed to zero after repeated overflows; the gradients are inf/NaN "
                    "at every scale, so the model or the data produce non-finite values"
                )
        return ok

    def state_dict(self) -> dict[str, Any]:
        return {
            "scale": self._scale,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "good_steps": self._good_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"scale", "growth_factor", "backoff_factor", "growth_interval", "good_steps"} - set(state)
        if missing:
            raise CompressError(
                f"loss scaler state is missing {sorted(missing)}; pass a DynamicLossScaler.state_dict()"
            )
        self._scale = float(state["scale"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self._good_steps = int(state["good_steps"])
        self._unscaled = None


def _cpu_copy(state: Any) -> Any:
    """A deep copy of a (nested) state dict with every tensor cloned to the CPU."""
    if isinstance(state, Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return type(state)((k, _cpu_copy(v)) for k, v in state.items())
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu_copy(v) for v in state)
    return copy.deepcopy(state)


class MixedPrecisionTrainer:
    """One mixed-precision training step at a time, with loss scaling for FP16 and a last good state.

    `dtype` is torch.float16, torch.bfloat16 or torch.float32 (autocast off); by default FP16 on CUDA and
    BF16 elsewhere. A loss scaler is used for FP16 only (pass `scaler` to configure it). The model's
    parameters must be FP32 and stay so. Every `snapshot_every` good steps (and once at construction) a
    copy of the model, optimizer and scaler state is kept on the CPU; a NaN/inf loss raises
    `NonFiniteLossError` and leaves that copy as `last_good_state()`, which `restore_last_good()` loads back.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        scaler: DynamicLossScaler | None = None,
        max_grad_norm: float | None = None,
        snapshot_every: int = 100,
    ):
        params = list(model.parameters())
        if device is None:
            device = params[0].device if params else torch.device("cpu")
        self.device = torch.device(device)
        if dtype is None:
            dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise CompressError(f"dtype must be torch.float16, torch.bfloat16 or torch.float32, got {dtype}")
        wrong = [name for name, p in model.named_parameters() if p.is_floating_point() and p.dtype != torch.float32]
        if wrong:
            raise CompressError(
                f"parameters {wrong[:5]} are not float32; mixed precision keeps FP32 master weights and lets "
                "autocast cast per op, so call model.float() first"
            )
        if snapshot_every < 1:
            raise CompressError(f"snapshot_every must be >= 1, got {snapshot_every}")
        self.model = model
        self.optimizer = optimizer
        self.dtype = dtype
        self.scaler = (scaler or DynamicLossScaler()) if dtype == torch.float16 else scaler
        self.max_grad_norm = max_grad_norm
        self.snapshot_every = snapshot_every
        self.steps = 0  # optimizer steps taken (skipped ones excluded)
        self._good_since_snapshot = 0
        self._last_good: dict[str, Any] = {}
        self._snapshot()

    def _snapshot(self) -> None:
        self._last_good = {
            "model": _cpu_copy(self.model.state_dict()),
            "optimizer": _cpu_copy(self.optimizer.state_dict()),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.steps,
        }
        self._good_since_snapshot = 0

    def last_good_state(self) -> dict[str, Any]:
        """The latest snapshot: {"model": state_dict, "optimizer": state_dict, "scaler": state or None, "step": int}."""
        return self._last_good

    def restore_last_good(self) -> None:
        """Load the latest snapshot back into the model, the optimizer and the scaler."""
        state = self._last_good
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.steps = state["step"]
        self._good_since_snapshot = 0

    def train_step(self, inputs: Any, targets: Any, loss_fn: Callable[[Any, Any], Tensor]) -> dict[str, Any]:
        """Forward under autocast, backward (scaled for FP16), optimizer step; returns {loss, scale, skipped}.

        `inputs` is a tensor or a tuple of tensors for the model; `loss_fn(outputs, targets)` gives a scalar.
        """
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            outputs = self.model(*args)
            loss = loss_fn(outputs, targets)
        if loss.dim() != 0 and loss.numel() != 1:
            raise CompressError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        loss_value = float(loss.detach().float())
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"the loss is {loss_value} at step {self.steps + 1}; training stopped. The last good state "
                f"(step {self._last_good['step']}) is kept: trainer.restore_last_good() loads it back. Check the "
                "inputs for NaN/inf, lower the learning rate, or train in float32 to find the failing op"
            )
        if self.scaler is not None:
            self.scaler.scale(loss.float()).backward()
            if self.max_grad_norm is not None and self.scaler.unscale_and_check(self.optimizer):
                nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            scale = self.scaler.get_scale()
            stepped = self.scaler.step(self.optimizer)
        else:
            loss.backward()
            if self.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()
            scale, stepped = 1.0, True
        if stepped:
            self.steps += 1
            self._good_since_snapshot += 1
            if self._good_since_snapshot >= self.snapshot_every:
                self._snapshot()
        return {"loss": loss_value, "scale": scale, "skipped": not stepped}
