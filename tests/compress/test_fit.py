"""The short training loop: a NaN loss stops it, puts the model back at its last good state and saves it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgekit.compress.amp import NonFiniteLossError
from edgekit.compress.fit import fit


def test_nan_loss_restores_and_saves_the_last_good_epoch(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    loader = DataLoader(TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,))), batch_size=8)
    fit(model, loader, epochs=1, lr=1e-2, progress=False)
    after_epoch_1 = {k: v.clone() for k, v in model.state_dict().items()}
    calls = 0

    def loss_fn(inputs, targets):  # fine for epoch 1 (4 steps) and one step of epoch 2, then NaN
        nonlocal calls
        calls += 1
        loss = nn.functional.cross_entropy(model(inputs), targets)
        return loss * math.nan if calls == 6 else loss

    fit(model, loader, epochs=0, lr=1e-2, progress=False)  # zero epochs: nothing changes, no error
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(before[k], after_epoch_1[k]) for k in before)
    checkpoint = tmp_path / "out" / "last_good.pt"
    with pytest.raises(NonFiniteLossError, match=r"nan at step 6 \(epoch 2\).*after epoch 1.*last_good.pt.*--lr"):
        fit(model, loader, epochs=3, lr=1e-2, loss_fn=loss_fn, progress=False, checkpoint=checkpoint)
    trained_one_epoch = model.state_dict()
    assert not all(torch.equal(trained_one_epoch[k], before[k]) for k in before)  # epoch 1 of this run is kept
    saved = torch.load(checkpoint)
    assert all(torch.equal(saved[k], trained_one_epoch[k]) for k in saved)
    assert all(torch.isfinite(v).all() for v in trained_one_epoch.values())
