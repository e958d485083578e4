"""Magnitude pruning on real torch models: masks through optimizer steps, exact sparsity, 2:4 patterns,
schedules, iterative pruning on sklearn digits, lottery rewinding and ONNX export."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from onnx import numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

from edgekit.compress.pruning import (  # noqa: E402
    CubicSchedule,
    LotteryTicket,
    MagnitudePruner,
    OneShotSchedule,
    is_n_m_sparse,
    iterative_prune,
    n_m_mask,
)
from edgekit.model import Model  # noqa: E402


def small_convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 8),
    )


def mlp(seed: int = 0, hidden: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


# -- masks survive training -----------------------------------------------------------------------


@pytest.mark.parametrize("attach", [True, False])
def test_masks_hold_through_sgd_with_momentum_and_weight_decay(attach: bool) -> None:
    model = small_convnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x, y = torch.randn(8, 4, 6, 6), torch.randint(0, 8, (8,))
    # Build momentum first so pruned weights have stale momentum that would revive them.
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    pruner = MagnitudePruner(model, 0.5)
    if attach:
        pruner.attach(optimizer)
    masks = {name: mask.clone() for name, mask in pruner.masks.items()}
    before = {name: module.weight.detach().clone() for name, module in pruner.layers.items()}
    for t in range(5):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if not attach:
            pruner.step(t)
        for name, module in pruner.layers.items():
            assert torch.all(module.weight[~masks[name]] == 0), name
    for name, module in pruner.layers.items():
        assert not torch.equal(module.weight[masks[name]], before[name][masks[name]]), f"{name} did not train"
    assert pruner.sparsity_report().total.sparsity == pytest.approx(0.5, abs=0.01)


def test_forward_never_uses_a_revived_weight() -> None:
    model = mlp()
    pruner = MagnitudePruner(model, 0.75)
    layer = model[0]
    with torch.no_grad():
        layer.weight.add_(1.0)  # as stale optimizer state would
    model(torch.randn(2, 64))
    assert torch.all(layer.weight[~pruner.masks["0"]] == 0)


# -- exact sparsity ---------------------------------------------------------------------------------


def test_layer_scope_prunes_the_exact_fraction_of_every_layer() -> None:
    model = small_convnet()
    pruner = MagnitudePruner(model, 0.3, scope="layer")
    report = pruner.sparsity_report()
    assert [row.name for row in report] == ["0", "2", "6"]
    for row, module in zip(report, pruner.layers.values(), strict=True):
        assert row.params == module.weight.numel()
        assert row.zeros == round(0.3 * row.params)
    assert report.total.params == 8 * 4 * 9 + 16 * 8 * 9 + 8 * 16
    assert report.total.zeros == sum(row.zeros for row in report)
    assert "total" in str(report)


def test_layer_scope_keeps_the_largest_magnitudes() -> None:
    model = mlp()
    original = model[0].weight.detach().abs().clone()
    pruner = MagnitudePruner(model, 0.6)
    mask = pruner.masks["0"]
    assert original[mask].min() >= original[~mask].max()


def test_global_scope_uses_one_threshold_across_layers() -> None:
    model = small_convnet()
    with torch.no_grad():
        model[6].weight.mul_(100.0)  # the linear layer's weights dominate: global pruning spares it
    originals = {n: m.weight.detach().abs().clone() for n, m in model.named_modules() if hasattr(m, "weight")}
    total = sum(w.numel() for w in originals.values())
    pruner = MagnitudePruner(model, 0.5, scope="global")
    report = pruner.sparsity_report()
    assert report.total.zeros == round(0.5 * total)
    by_name = {row.name: row for row in report}
    assert by_name["6"].zeros == 0
    assert by_name["0"].sparsity != pytest.approx(0.5) or by_name["2"].sparsity != pytest.approx(0.5)
    kept = torch.cat([originals[n][pruner.masks[n]] for n in pruner.layers])
    dropped = torch.cat([originals[n][~pruner.masks[n]] for n in pruner.layers])
    assert kept.min() >= dropped.max()


def test_raising_sparsity_keeps_earlier_pruned_weights_pruned() -> None:
    model = mlp()
    pruner = MagnitudePruner(model, 0.3)
    first = {name: mask.clone() for name, mask in pruner.masks.items()}
    pruner.apply(0.6)
    for name, mask in pruner.masks.items():
        assert not torch.any(mask & ~first[name])
        assert int((~mask).sum()) == round(0.6 * mask.numel())


# -- N:M ------------------------------------------------------------------------------------------


def test_two_four_pattern_holds_in_every_group() -> None:
    model = small_convnet()
    pruner = MagnitudePruner(model, n_m=(2, 4))
    for name, module in pruner.layers.items():
        weight = module.weight.detach()
        assert is_n_m_sparse(weight, 2, 4), name
        groups = weight.movedim(1, -1).reshape(-1, 4)
        assert torch.all((groups != 0).sum(dim=1) == 2), name
    assert pruner.sparsity == 0.5
    assert pruner.sparsity_report().total.sparsity == pytest.approx(0.5)


def test_n_m_keeps_the_largest_per_group_along_the_input_dimension() -> None:
    weight = torch.tensor([[1.0, -5.0, 2.0, 0.5, 9.0, 8.0, -7.0, 6.0]])
    mask = n_m_mask(weight, 2, 4)
    assert mask.tolist() == [[False, True, True, False, True, True, False, False]]
    assert is_n_m_sparse(weight * mask, 2, 4)
    assert not is_n_m_sparse(weight, 2, 4)
    # groups run along dim 1 (input channels), not along the flattened kernel
    conv_weight = torch.zeros(1, 4, 2, 2)
    conv_weight[0, :, 0, 0] = 1.0  # 4 non-zeros in one input-channel group
    assert not is_n_m_sparse(conv_weight, 2, 4)


def test_n_m_rejects_input_dims_not_divisible_and_names_the_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(4))
    with pytest.raises(ValueError, match="layer '0'"):
        MagnitudePruner(model, n_m=(2, 4), modules=(nn.Conv2d,))
    pruner = MagnitudePruner(nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)), n_m=(2, 4), exclude=["0"])
    assert list(pruner.layers) == ["1"]


# -- guards ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [1.0, 1.5, -0.1])
def test_sparsity_out_of_range_is_rejected(sparsity: float) -> None:
    with pytest.raises(ValueError, match="sparsity must be in"):
        MagnitudePruner(mlp(), sparsity)


def test_a_ratio_that_would_empty_a_layer_names_the_layer() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with pytest.raises(ValueError, match="layer '2'"):
        MagnitudePruner(model, 0.8)  # round(0.8 * 2) == 2: the last layer would be empty
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))
    with torch.no_grad():
        model[2].weight.fill_(1e-6)  # tiny weights: one global threshold would take them all
    with pytest.raises(ValueError, match="layer '2'.*scope='layer'"):
        MagnitudePruner(model, 0.9, scope="global")


def test_no_prunable_layers_and_double_pruning_are_rejected() -> None:
    with pytest.raises(ValueError, match="no prunable layers"):
        MagnitudePruner(nn.Sequential(nn.ReLU()), 0.5)
    model = mlp()
    MagnitudePruner(model, 0.5)
    with pytest.raises(ValueError, match="already pruned"):
        MagnitudePruner(model, 0.5)


# -- schedules ------------------------------------------------------------------------------------


def test_cubic_schedule_matches_hand_computation() -> None:
    schedule = CubicSchedule(initial=0.1, final=0.9, start_step=10, n_steps=4, frequency=5)
    assert schedule.end_step == 30
    assert schedule(0) == pytest.approx(0.1)  # before t0: clamped to t0
    assert schedule(10) == pytest.approx(0.1)
    # middle: (t - t0) / (n dt) = 10 / 20 -> 0.9 + (0.1 - 0.9) * 0.5**3 = 0.8
    assert schedule(20) == pytest.approx(0.8)
    assert schedule(24) == pytest.approx(0.8)  # only updated every `frequency` steps
    assert schedule(15) == pytest.approx(0.9 - 0.8 * 0.75**3)  # 0.5625
    assert schedule(30) == pytest.approx(0.9)
    assert schedule(1000) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="final"):
        CubicSchedule(0.0, 1.0, 0, 10)


def test_pruner_follows_a_schedule_through_step() -> None:
    model = mlp()
    pruner = MagnitudePruner(model, CubicSchedule(0.0, 0.8, start_step=2, n_steps=2, frequency=2))
    assert pruner.sparsity == 0.0
    assert pruner.step(1) == 0.0
    assert pruner.step(4) == pytest.approx(0.8 - 0.8 * 0.5**3)
    assert pruner.step(5) == pytest.approx(0.7)
    assert pruner.step(6) == pytest.approx(0.8)
    for row in pruner.sparsity_report():
        assert row.zeros == round(0.8 * row.params)
    one_shot = MagnitudePruner(mlp(), OneShotSchedule(0.5, at_step=3))
    assert one_shot.step(2) == 0.0
    assert one_shot.step(3) == 0.5
    assert one_shot.sparsity_report().total.sparsity == pytest.approx(0.5, abs=1e-3)


# -- remove ---------------------------------------------------------------------------------------


def test_remove_leaves_plain_weights_with_zeros() -> None:
    model = small_convnet()
    pruner = MagnitudePruner(model, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner.attach(optimizer)
    pruner.remove()
    for module in pruner.layers.values():
        assert type(module.weight) is nn.Parameter
        assert not hasattr(module, "weight_mask")
        assert not hasattr(module, "weight_orig")
        assert not module._forward_pre_hooks
        assert not module.weight._backward_hooks
    assert "0.weight_mask" not in model.state_dict()
    with pytest.raises(RuntimeError, match="removed"):
        pruner.apply(0.6)
    zeros = sum(int((m.weight == 0).sum()) for m in pruner.layers.values())
    assert zeros == pruner.sparsity_report().total.zeros > 0


# -- lottery tickets ------------------------------------------------------------------------------


def test_lottery_rewind_restores_initial_values_on_survivors_and_keeps_zeros() -> None:
    model = mlp()
    ticket = LotteryTicket(model)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    pruner = MagnitudePruner(model, 0.7)
    ticket.rewind(pruner)
    for name, module in pruner.layers.items():
        mask = pruner.masks[name]
        assert torch.equal(module.weight[mask], initial[f"{name}.weight"][mask])
        assert torch.all(module.weight[~mask] == 0)
        assert torch.equal(module.bias, initial[f"{name}.bias"])
    assert pruner.sparsity_report().total.sparsity == pytest.approx(0.7, abs=1e-3)


def test_lottery_snapshot_at_step_k() -> None:
    model = mlp()
    ticket = LotteryTicket(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ticket.snapshot()
    early = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    pruner = MagnitudePruner(model, 0.5)
    ticket.rewind(pruner)
    mask = pruner.masks["0"]
    assert torch.equal(model[0].weight[mask], early[mask])


# -- iterative pruning on digits ------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=generator)
    train, test = order[:1400], order[1400:]
    return x[train], y[train], x[test], y[test]


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for batch in torch.split(torch.arange(len(y)), 200):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def test_iterative_pruning_reaches_the_target_within_budget(digits: tuple[torch.Tensor, ...]) -> None:
    x_train, y_train, x_test, y_test = digits
    model = mlp(seed=1, hidden=64)
    _train(model, x_train, y_train, epochs=15)
    result = iterative_prune(
        model,
        lambda m: _train(m, x_train, y_train, epochs=3),
        lambda m: _accuracy(m, x_test, y_test),
        target_sparsity=0.8,
        steps=4,
        max_drop=0.05,
    )
    assert result.baseline > 0.9
    assert result.reached_target
    assert [r.accepted for r in result.rounds] == [True] * 4
    sparsities = [r.sparsity for r in result.rounds]
    assert sparsities == sorted(sparsities) and sparsities[-1] == 0.8
    assert result.baseline - result.metric <= 0.05
    for row in result.pruner.sparsity_report():
        assert row.zeros == round(0.8 * row.params)
    assert _accuracy(model, x_test, y_test) == pytest.approx(result.metric)


def test_iterative_pruning_stops_and_restores_when_the_budget_breaks(digits: tuple[torch.Tensor, ...]) -> None:
    x_train, y_train, x_test, y_test = digits
    model = mlp(seed=1, hidden=64)
    _train(model, x_train, y_train, epochs=15)
    states = []

    def no_fine_tune(m: nn.Module) -> None:
        states.append({k: v.clone() for k, v in m.state_dict().items()})

    result = iterative_prune(
        model,
        no_fine_tune,
        lambda m: _accuracy(m, x_test, y_test),
        target_sparsity=0.99,
        steps=6,
        max_drop=0.02,
    )
    assert not result.reached_target
    assert result.rounds[-1].accepted is False
    assert result.baseline - result.rounds[-1].metric > 0.02
    accepted = [r for r in result.rounds if r.accepted]
    assert all(result.baseline - r.metric <= 0.02 for r in accepted)
    # back to the last good state: its sparsity, its metric, its weights
    assert result.sparsity == (accepted[-1].sparsity if accepted else 0.0)
    assert _accuracy(model, x_test, y_test) == pytest.approx(result.metric)
    assert result.baseline - result.metric <= 0.02
    if accepted:
        good = states[len(accepted) - 1]
        for key, value in model.state_dict().items():
            assert torch.equal(value, good[key]), key


# -- export ---------------------------------------------------------------------------------------


def test_export_of_a_pruned_model_keeps_zeros_in_onnx_initializers() -> None:
    model = small_convnet()
    pruner = MagnitudePruner(model, 0.6, scope="global")
    expected = {tuple(m.weight.shape): int((m.weight == 0).sum()) for m in pruner.layers.values()}
    pruner.remove()
    exported = Model.from_torch(model, torch.randn(1, 4, 8, 8))
    initializers = [numpy_helper.to_array(t) for t in exported.proto.graph.initializer]
    for shape, zeros in expected.items():
        matches = [a for a in initializers if a.shape == shape]
        assert matches, f"no initializer of shape {shape}"
        assert any(int(np.sum(a == 0)) == zeros for a in matches), shape
    assert sum(expected.values()) > 0


def test_export_with_masks_still_attached() -> None:
    model = mlp()
    pruner = MagnitudePruner(model, n_m=(2, 4))
    exported = Model.from_torch(model, torch.randn(1, 64))
    weights = [numpy_helper.to_array(t) for t in exported.proto.graph.initializer if t.dims == [32, 64]]
    assert weights and is_n_m_sparse(torch.from_numpy(weights[0].copy()), 2, 4)
    assert pruner.masks["0"].shape == (32, 64)
