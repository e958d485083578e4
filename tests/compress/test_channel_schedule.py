"""Structured pruning in rounds toward a MAC budget: each round's cut lands near its MAC goal, fine-tuning runs
after every cut, the input model is untouched, and an accuracy budget stops the rounds and keeps the last good
model."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgekit.compress.channel_schedule import count_macs, prune_channels_iteratively  # noqa: E402


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).eval()


EXAMPLE = torch.zeros(1, 3, 16, 16)


def test_count_macs_by_hand():
    # conv1: 16*16*32 outputs x 3*3*3; conv2: 16*16*64 x 32*3*3; linear: 10 x 64
    assert count_macs(net(), EXAMPLE) == 16 * 16 * 32 * 27 + 16 * 16 * 64 * 288 + 640


def test_rounds_step_down_to_the_mac_target_and_train_after_each_cut():
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained: list[int] = []
    result = prune_channels_iteratively(
        model,
        EXAMPLE,
        lambda m: trained.append(count_macs(m, EXAMPLE)),
        lambda m: 1.0,
        target_macs=0.4,
        steps=3,
        multiple_of=1,
    )
    fractions = [r.macs_fraction for r in result.rounds]
    assert fractions == pytest.approx([0.8, 0.6, 0.4], abs=0.04)
    assert len(trained) == 3 and trained == sorted(trained, reverse=True)  # train_fn saw each smaller model
    assert result.reached_target and result.macs_fraction == pytest.approx(0.4, abs=0.04)
    assert count_macs(result.model, EXAMPLE) / count_macs(model, EXAMPLE) == pytest.approx(result.macs_fraction)
    assert result.model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the input is untouched
    assert len(result.reports) == 3


def test_accuracy_budget_stops_at_the_last_good_round():
    model = net()
    metrics = iter([0.95, 0.94, 0.80])  # baseline, round 1 (drop 0.01: ok), round 2 (drop 0.15: too much)
    result = prune_channels_iteratively(
        model, EXAMPLE, lambda m: None, lambda m: next(metrics), target_macs=0.5, steps=4, max_drop=0.05
    )
    assert [r.accepted for r in result.rounds] == [True, False]
    assert not result.reached_target and result.metric == 0.94
    assert result.macs_fraction == result.rounds[0].macs_fraction
    assert count_macs(result.model, EXAMPLE) / count_macs(model, EXAMPLE) == pytest.approx(result.macs_fraction)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_macs": 1.0}, "target_macs"),
        ({"target_macs": 0.5, "steps": 0}, "steps"),
        ({"target_macs": 0.5, "max_drop": -1}, "max_drop"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        prune_channels_iteratively(net(), EXAMPLE, lambda m: None, lambda m: 1.0, **kwargs)
