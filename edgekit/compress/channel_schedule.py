"""Structured pruning toward a MAC budget: channels removed in rounds, each followed by fine-tuning.

One cut to half the MACs costs a network far more accuracy than the same cut taken in steps with training in
between (the network re-routes what it needs through the channels that stay). `prune_channels_iteratively` takes
the MAC fraction from 1.0 down to `target_macs` in `steps` equal rounds; each round searches the channel ratio
whose result has the round's MACs (bisection over `prune_channels`), then runs the caller's `train_fn` and
`eval_fn`. With `max_drop`, a round that leaves the metric more than that below the unpruned model is undone and
pruning stops there: the result says which budget was reached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from edgekit.compress.structured import ChannelPruneReport, Criterion, prune_channels
from edgekit.errors import CompressError

__all__ = ["ChannelRound", "IterativeChannelResult", "count_macs", "prune_channels_iteratively"]


def count_macs(model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    """Multiply-accumulates of the Conv2d and Linear layers for one forward pass of `example_input` (the ops that
    hold nearly all of a CNN's MACs; element-wise ops and pools are left out)."""
    total = 0

    def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += out.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += out.numel() * module.in_features  # type: ignore[operator]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*(example_input if isinstance(example_input, tuple) else (example_input,)))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total


@dataclass
class ChannelRound:
    round: int
    macs_fraction: float  # of the original model's MACs, as pruned in this round
    ratio: float  # the channel ratio `prune_channels` used on the previous round's model
    metric: float
    accepted: bool


@dataclass
class IterativeChannelResult:
    """What `prune_channels_iteratively` did; `model` is the last accepted one (the input model when none was)."""

    model: nn.Module
    baseline: float
    target_macs: float
    steps: int
    macs_fraction: float
    metric: float
    rounds: list[ChannelRound] = field(default_factory=list)
    reports: list[ChannelPruneReport] = field(default_factory=list)  # one per accepted round

    @property
    def reached_target(self) -> bool:
        """Every round was kept and the MACs are at the target (channel counts are discrete: 5 points of slack)."""
        return sum(r.accepted for r in self.rounds) == self.steps and self.macs_fraction <= self.target_macs + 0.05


def _cut_to(model: nn.Module, example_input: Any, macs_goal: int, **options: Any) -> tuple[Any, float, int]:
    """The `prune_channels` result of `model` whose MACs come closest to `macs_goal` (bisection on the ratio)."""
    lo, hi = 0.0, 0.95
    best: tuple[int, Any, float, int] | None = None
    for _ in range(10):
        ratio = (lo + hi) / 2
        result = prune_channels(model, example_input, ratio=ratio, **options)
        macs = count_macs(result.model, example_input)
        if best is None or abs(macs - macs_goal) < best[0]:
            best = (abs(macs - macs_goal), result, ratio, macs)
        if macs > macs_goal:
            lo = ratio
        else:
            hi = ratio
    assert best is not None
    return best[1], best[2], best[3]


def prune_channels_iteratively(
    model: nn.Module,
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    train_fn: Callable[[nn.Module], Any],
    eval_fn: Callable[[nn.Module], float],
    *,
    target_macs: float,
    steps: int = 3,
    max_drop: float | None = None,
    criterion: Criterion = "l1",
    multiple_of: int = 8,
    exclude: Iterable[str] = (),
    coupled: Literal["prune", "keep"] = "prune",
) -> IterativeChannelResult:
    """Prune `model` in `steps` rounds until it has `target_macs` (a fraction, e.g. 0.5) of its Conv2d/Linear MACs,
    running `train_fn(model)` (fine-tune in place) and `eval_fn(model)` (higher is better) after each cut.

    The input model is left untouched; each round works on a pruned copy (`prune_channels` semantics: residual
    groups pruned together, or left whole with `coupled="keep"`; kept counts a multiple of `multiple_of`). With
    `max_drop`, the first round whose metric falls more than `max_drop` below the unpruned model's is discarded
    and pruning stops.
    """
    if not 0.0 < target_macs < 1.0:
        raise CompressError(f"target_macs must be a fraction in (0, 1) of the model's MACs, got {target_macs}")
    if steps < 1:
        raise CompressError(f"steps must be >= 1, got {steps}")
    if max_drop is not None and max_drop < 0:
        raise CompressError(f"max_drop must be >= 0 (the allowed metric drop), got {max_drop}")
    options = {"criterion": criterion, "multiple_of": multiple_of, "exclude": tuple(exclude), "coupled": coupled}
    original_macs = count_macs(model, example_input)
    baseline = float(eval_fn(model))
    result = IterativeChannelResult(model, baseline, target_macs, steps, 1.0, baseline)
    current = model
    for k in range(1, steps + 1):
        goal = round(original_macs * (1.0 - (1.0 - target_macs) * k / steps))
        pruned, ratio, macs = _cut_to(current, example_input, goal, **options)
        candidate = pruned.model
        train_fn(candidate)
        metric = float(eval_fn(candidate))
        accepted = max_drop is None or baseline - metric <= max_drop
        result.rounds.append(ChannelRound(k, macs / original_macs, ratio, metric, accepted))
        if not accepted:
            break
        current = candidate
        result.model, result.macs_fraction, result.metric = candidate, macs / original_macs, metric
        result.reports.append(pruned.report)
    return result
