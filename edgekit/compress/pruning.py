"""Magnitude pruning for the user's own torch training loop: masks, sparsity schedules, N:M sparsity,
iterative prune/fine-tune and lottery-ticket rewinding.

How masks survive training: each pruned module keeps its ``weight`` as an ordinary ``nn.Parameter``
(so optimizers, state dicts and ONNX export see the usual names) plus a boolean ``weight_mask`` buffer
(non-persistent, so checkpoints stay loadable into an unpruned model; it follows ``.to(device)``).
Three mechanisms keep pruned weights at exactly zero:

- a gradient hook zeroes the gradient of pruned entries, so plain SGD/Adam never move them;
- ``MagnitudePruner.attach(optimizer)`` registers a step post-hook that re-applies the masks after every
  ``optimizer.step()`` and clears optimizer state (momentum, Adam moments) for pruned entries, so stale
  momentum from before pruning cannot revive them;
- a forward pre-hook re-applies the mask before every forward, so the model never computes with a
  revived weight even without ``attach`` (then weights read between ``step()`` and the next forward may
  be non-zero; call ``pruner.step(t)`` or ``apply_masks()`` after ``optimizer.step()`` to avoid that).

``remove()`` bakes the zeros into the weights and takes away hooks and buffers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

import torch
from torch import nn

from edgekit.errors import CompressError, CompressStateError

MASK_NAME = "weight_mask"

__all__ = [
    "CubicSchedule",
    "IterativePruneResult",
    "LayerSparsity",
    "LotteryTicket",
    "MagnitudePruner",
    "OneShotSchedule",
    "PruneRound",
    "Schedule",
    "SparsityReport",
    "is_n_m_sparse",
    "iterative_prune",
    "n_m_mask",
]


# -- schedules ------------------------------------------------------------------------------------


class Schedule(Protocol):
    """Target sparsity as a function of the training step."""

    def __call__(self, step: int) -> float: ...


def _check_sparsity(value: float, label: str) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0 or math.isnan(value):
        raise CompressError(f"{label} must be in [0, 1), got {value}; a sparsity of 1 would remove every weight")
    return value


@dataclass(frozen=True)
class CubicSchedule:
    """Zhu & Gupta (2017) gradual pruning: s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3.

    t is clamped to [t0, t0 + n * dt] and rounded down to the last update step, so the target changes
    only every ``frequency`` steps and stays at ``final`` after ``start_step + n_steps * frequency``.
    """

    initial: float
    final: float
    start_step: int
    n_steps: int
    frequency: int = 1

    def __post_init__(self) -> None:
        _check_sparsity(self.initial, "CubicSchedule initial")
        _check_sparsity(self.final, "CubicSchedule final")
        if self.n_steps < 1 or self.frequency < 1:
            raise CompressError(
                f"CubicSchedule needs n_steps >= 1 and frequency >= 1, got {self.n_steps} and {self.frequency}"
            )
        if self.start_step < 0:
            raise CompressError(f"CubicSchedule start_step must be >= 0, got {self.start_step}")

    @property
    def end_step(self) -> int:
        return self.start_step + self.n_steps * self.frequency

    def __call__(self, step: int) -> float:
        t = min(max(step, self.start_step), self.end_step)
        t = self.start_step + (t - self.start_step) // self.frequency * self.frequency
        progress = (t - self.start_step) / (self.n_steps * self.frequency)
        return self.final + (self.initial - self.final) * (1.0 - progress) ** 3


@dataclass(frozen=True)
class OneShotSchedule:
    """Prune straight to ``final`` at ``at_step`` (sparsity 0 before it)."""

    final: float
    at_step: int = 0

    def __post_init__(self) -> None:
        _check_sparsity(self.final, "OneShotSchedule final")

    def __call__(self, step: int) -> float:
        return self.final if step >= self.at_step else 0.0


# -- N:M sparsity ---------------------------------------------------------------------------------


def _check_n_m(n: int, m: int) -> None:
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise CompressError(f"N:M sparsity needs integers 0 < n < m (e.g. (2, 4) for sparse tensor cores), got {n}:{m}")


def _groups(weight: torch.Tensor, m: int) -> torch.Tensor:
    """View ``weight`` (out, in, *kernel) as (-1, m) groups of consecutive input-dimension entries."""
    return weight.movedim(1, -1).reshape(-1, m)


def n_m_mask(weight: torch.Tensor, n: int, m: int, *, name: str = "weight") -> torch.Tensor:
    """Boolean mask keeping the ``n`` largest-magnitude weights in every ``m`` consecutive input entries."""
    _check_n_m(n, m)
    if weight.dim() < 2 or weight.shape[1] % m:
        raise CompressError(
            f"{name}: N:M sparsity groups the input dimension (dim 1) in blocks of {m}, but the weight has shape "
            f"{tuple(weight.shape)}; leave this layer out with exclude=[...]"
        )
    groups = _groups(weight.detach().abs(), m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(n, dim=1).indices, True)
    moved_shape = weight.movedim(1, -1).shape
    return keep.reshape(moved_shape).movedim(-1, 1).contiguous()


def is_n_m_sparse(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive input-dimension weights has at most ``n`` non-zeros."""
    _check_n_m(n, m)
    if weight.dim() < 2 or weight.shape[1] % m:
        return False
    return bool(((_groups(weight.detach(), m) != 0).sum(dim=1) <= n).all())


# -- reports --------------------------------------------------------------------------------------


class LayerSparsity(NamedTuple):
    name: str
    params: int
    zeros: int
    sparsity: float


@dataclass
class SparsityReport:
    """Zeros per prunable weight and in total (``total.name`` is ``"total"``)."""

    layers: list[LayerSparsity]
    total: LayerSparsity

    def __iter__(self) -> Iterator[LayerSparsity]:
        return iter(self.layers)

    def __str__(self) -> str:
        width = max([len(row.name) for row in [*self.layers, self.total]])
        lines = [f"{row.name:<{width}}  {row.params:>10}  {row.zeros:>10}  {row.sparsity:7.2%}" for row in self.layers]
        total = self.total
        lines.append(f"{total.name:<{width}}  {total.params:>10}  {total.zeros:>10}  {total.sparsity:7.2%}")
        return "\n".join(lines)


# -- the pruner -----------------------------------------------------------------------------------


class MagnitudePruner:
    """Prune the weights of ``modules``-typed layers of ``model`` by magnitude.

    ``sparsity`` is a fraction in [0, 1) applied at once, or a schedule (``CubicSchedule``,
    ``OneShotSchedule`` or any ``step -> sparsity`` callable) followed through ``step(t)``.
    ``scope="layer"`` prunes the same fraction of every layer; ``scope="global"`` uses one magnitude
    threshold across all prunable weights. ``n_m=(2, 4)`` instead keeps the 2 largest of every 4
    consecutive input-dimension weights (Ampere/Orin sparse tensor cores); ``sparsity`` must then be
    omitted. Layers named in ``exclude`` stay dense.
    """

    def __init__(
        self,
        model: nn.Module,
        sparsity: float | Schedule | None = None,
        *,
        scope: Literal["layer", "global"] = "layer",
        modules: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
        n_m: tuple[int, int] | None = None,
        exclude: Iterable[str] = (),
    ) -> None:
        if scope not in ("layer", "global"):
            raise CompressError(f"scope must be 'layer' or 'global', got {scope!r}")
        if n_m is not None:
            _check_n_m(*n_m)
            if sparsity is not None:
                raise CompressError(f"give either sparsity or n_m={n_m}, not both: N:M fixes the sparsity at 1 - n/m")
        self.model = model
        self.scope = scope
        self.n_m = n_m
        excluded = set(exclude)
        self.layers: dict[str, nn.Module] = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, modules)
            and name not in excluded
            and isinstance(getattr(module, "weight", None), nn.Parameter)
        }
        if not self.layers:
            kinds = ", ".join(t.__name__ for t in modules)
            raise CompressError(f"{type(model).__name__} has no prunable layers of type {kinds} (after exclude)")
        for name, module in self.layers.items():
            if hasattr(module, "weight_orig") or hasattr(module, MASK_NAME):
                raise CompressError(
                    f"layer {name!r} is already pruned (torch.nn.utils.prune or another MagnitudePruner); "
                    "call remove() on that pruning first"
                )
        self.schedule: Schedule | None = None if sparsity is None or isinstance(sparsity, (int, float)) else sparsity
        self.sparsity = 0.0
        self.optimizer_handles: list[Any] = []
        self._handles: list[Any] = []
        self._removed = False
        for module in self.layers.values():
            module.register_buffer(MASK_NAME, torch.ones_like(module.weight, dtype=torch.bool), persistent=False)
            self._handles.append(module.register_forward_pre_hook(_mask_before_forward))
            self._handles.append(module.weight.register_hook(_grad_mask_hook(module)))
        if n_m is not None:
            self.apply()
        elif self.schedule is not None:
            self.step(0)
        else:
            self.apply(float(sparsity or 0.0))

    # -- masks --

    def _check_alive(self) -> None:
        if self._removed:
            raise CompressStateError("this MagnitudePruner was removed; create a new one to prune again")

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return {name: getattr(module, MASK_NAME) for name, module in self.layers.items()}

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Install masks (e.g. saved from ``masks``) and zero the weights they remove."""
        self._check_alive()
        for name, mask in masks.items():
            module = self.layers[name]
            getattr(module, MASK_NAME).copy_(mask.to(torch.bool))
        self.apply_masks()

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every pruned weight (cheap; call after ``optimizer.step()`` if not ``attach``-ed)."""
        self._check_alive()
        for module in self.layers.values():
            module.weight.mul_(getattr(module, MASK_NAME))

    @torch.no_grad()
    def apply(self, sparsity: float | None = None) -> None:
        """Recompute the masks from the current weight magnitudes at ``sparsity`` and apply them.

        Pruned weights are zero and so the smallest: raising the sparsity keeps them pruned.
        """
        self._check_alive()
        self.apply_masks()
        if self.n_m is not None:
            if sparsity is not None:
                raise CompressError(f"this pruner uses N:M {self.n_m}; call apply() without a sparsity")
            n, m = self.n_m
            for name, module in self.layers.items():
                getattr(module, MASK_NAME).copy_(n_m_mask(module.weight, n, m, name=f"layer {name!r}"))
            self.sparsity = 1.0 - n / m
            self.apply_masks()
            return
        sparsity = _check_sparsity(self.sparsity if sparsity is None else sparsity, "sparsity")
        masks = self._layer_masks(sparsity) if self.scope == "layer" else self._global_masks(sparsity)
        for name, mask in masks.items():
            getattr(self.layers[name], MASK_NAME).copy_(mask)
        self.sparsity = sparsity
        self.apply_masks()

    def _layer_masks(self, sparsity: float) -> dict[str, torch.Tensor]:
        masks = {}
        for name, module in self.layers.items():
            weight = module.weight.detach()
            k = round(sparsity * weight.numel())
            if k >= weight.numel():
                raise CompressError(
                    f"sparsity {sparsity} would remove all {weight.numel()} weights of layer {name!r}; "
                    "lower the sparsity or leave the layer out with exclude=[...]"
                )
            masks[name] = _keep_largest(weight.abs().flatten(), k).reshape(weight.shape)
        return masks

    def _global_masks(self, sparsity: float) -> dict[str, torch.Tensor]:
        weights = [module.weight.detach() for module in self.layers.values()]
        device = weights[0].device
        flat = torch.cat([w.abs().flatten().to(device=device, dtype=torch.float32) for w in weights])
        keep = _keep_largest(flat, round(sparsity * flat.numel()))
        masks, offset = {}, 0
        for name, weight in zip(self.layers, weights, strict=True):
            mask = keep[offset : offset + weight.numel()]
            offset += weight.numel()
            if not mask.any():
                raise CompressError(
                    f"global sparsity {sparsity} would remove every weight of layer {name!r}; lower the "
                    "sparsity, use scope='layer', or leave the layer out with exclude=[...]"
                )
            masks[name] = mask.reshape(weight.shape).to(weight.device)
        return masks

    def step(self, t: int) -> float:
        """Follow the schedule at training step ``t`` (re-masking when its target changes) and re-apply
        the masks; returns the current sparsity. Call it once per step after ``optimizer.step()``."""
        self._check_alive()
        if self.schedule is not None and self.n_m is None:
            target = _check_sparsity(self.schedule(t), f"schedule value at step {t}")
            if target != self.sparsity:
                self.apply(target)
                return self.sparsity
        self.apply_masks()
        return self.sparsity

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Re-apply masks after every ``optimizer.step()`` and clear optimizer state of pruned entries."""
        self._check_alive()
        by_param = {id(module.weight): module for module in self.layers.values()}

        @torch.no_grad()
        def after_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            for group in opt.param_groups:
                for param in group["params"]:
                    module = by_param.get(id(param))
                    if module is None:
                        continue
                    mask = getattr(module, MASK_NAME)
                    param.mul_(mask)
                    for value in opt.state.get(param, {}).values():
                        if isinstance(value, torch.Tensor) and value.shape == param.shape:
                            value.mul_(mask)

        handle = optimizer.register_step_post_hook(after_step)
        self.optimizer_handles.append(handle)
        return handle

    def remove(self) -> None:
        """Make pruning permanent: weights keep their zeros as plain parameters; hooks and masks go."""
        self._check_alive()
        self.apply_masks()
        for handle in [*self._handles, *self.optimizer_handles]:
            handle.remove()
        for module in self.layers.values():
            delattr(module, MASK_NAME)
        self._handles, self.optimizer_handles = [], []
        self._removed = True

    # -- reports --

    def sparsity_report(self) -> SparsityReport:
        """Actual zeros per prunable weight (counted in the weights, not the masks) and in total."""
        rows = []
        for name, module in self.layers.items():
            weight = module.weight.detach()
            zeros = int((weight == 0).sum())
            rows.append(LayerSparsity(name, weight.numel(), zeros, zeros / weight.numel()))
        params, zeros = sum(r.params for r in rows), sum(r.zeros for r in rows)
        return SparsityReport(rows, LayerSparsity("total", params, zeros, zeros / params if params else 0.0))


def _keep_largest(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """Mask keeping all but the ``k`` smallest entries (exactly ``k`` pruned, ties broken by index)."""
    keep = torch.ones_like(magnitudes, dtype=torch.bool)
    if k > 0:
        keep[torch.topk(magnitudes, k, largest=False, sorted=False).indices] = False
    return keep


def _mask_before_forward(module: nn.Module, args: Any) -> None:
    # .data: no autograd version bump, so a graph built before this forward can still be backwarded.
    module.weight.data.mul_(getattr(module, MASK_NAME))


def _grad_mask_hook(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * getattr(module, MASK_NAME)

    return hook


# -- lottery tickets ------------------------------------------------------------------------------


class LotteryTicket:
    """Snapshot of a model's weights for lottery-ticket rewinding (Frankle & Carbin; Frankle et al.
    2019 rewind to an early iteration k rather than to initialisation)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.state: dict[str, torch.Tensor] = {}
        self.snapshot()

    def snapshot(self) -> None:
        """Record the current parameters and buffers (at init, or at step k for late rewinding)."""
        self.state = {key: value.detach().clone() for key, value in self.model.state_dict().items()}

    @torch.no_grad()
    def rewind(self, pruner: MagnitudePruner) -> None:
        """Reset every weight to the snapshot, keeping ``pruner``'s masks (pruned weights stay zero)."""
        self.model.load_state_dict(self.state)
        pruner.apply_masks()


# -- iterative pruning ----------------------------------------------------------------------------


@dataclass
class PruneRound:
    round: int
    sparsity: float
    metric: float
    accepted: bool


@dataclass
class IterativePruneResult:
    """What ``iterative_prune`` did. ``sparsity`` is what the model holds now; ``pruner`` is still
    attached (call ``pruner.remove()`` before export, or keep fine-tuning)."""

    baseline: float
    target_sparsity: float
    sparsity: float
    metric: float
    rounds: list[PruneRound] = field(default_factory=list)
    pruner: MagnitudePruner | None = None

    @property
    def reached_target(self) -> bool:
        return math.isclose(self.sparsity, self.target_sparsity)


def iterative_prune(
    model: nn.Module,
    train_fn: Callable[[nn.Module], Any],
    eval_fn: Callable[[nn.Module], float],
    *,
    target_sparsity: float,
    steps: int,
    max_drop: float | None = None,
    scope: Literal["layer", "global"] = "layer",
    modules: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
    exclude: Iterable[str] = (),
) -> IterativePruneResult:
    """Prune in ``steps`` rounds up to ``target_sparsity`` (cubic ramp: big cuts first, small ones near
    the target), running ``train_fn(model)`` to fine-tune and ``eval_fn(model)`` (higher is better)
    after each. When a round leaves the metric more than ``max_drop`` below the unpruned baseline, the
    model goes back to the last accepted round and pruning stops.
    """
    target_sparsity = _check_sparsity(target_sparsity, "target_sparsity")
    if steps < 1:
        raise CompressError(f"steps must be >= 1, got {steps}")
    if max_drop is not None and max_drop < 0:
        raise CompressError(f"max_drop must be >= 0 (the allowed metric drop), got {max_drop}")
    baseline = float(eval_fn(model))
    pruner = MagnitudePruner(model, 0.0, scope=scope, modules=modules, exclude=exclude)
    schedule = CubicSchedule(0.0, target_sparsity, 0, steps, 1)
    result = IterativePruneResult(baseline, target_sparsity, 0.0, baseline, pruner=pruner)
    for k in range(1, steps + 1):
        good_state = copy.deepcopy(model.state_dict())
        good_masks = {name: mask.clone() for name, mask in pruner.masks.items()}
        sparsity = target_sparsity if k == steps else schedule(k)
        pruner.apply(sparsity)
        train_fn(model)
        pruner.apply_masks()
        metric = float(eval_fn(model))
        accepted = max_drop is None or baseline - metric <= max_drop
        result.rounds.append(PruneRound(k, sparsity, metric, accepted))
        if not accepted:
            model.load_state_dict(good_state)
            pruner.set_masks(good_masks)
            pruner.sparsity = result.sparsity
            break
        result.sparsity, result.metric = sparsity, metric
    return result
