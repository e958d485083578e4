"""Loss scaling and mixed-precision training steps on real torch modules."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from edgekit.compress.amp import DynamicLossScaler, MixedPrecisionTrainer, NonFiniteLossError  # noqa: E402


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def _backward(model: nn.Module, scaler: DynamicLossScaler, *, inject_inf: bool = False) -> None:
    x, y = _batch()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    if inject_inf:
        model[0].weight.grad[0, 0] = math.inf


def test_unscale_divides_exactly() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = DynamicLossScaler(init_scale=1024.0)
    expected = {}
    for name, p in model.named_parameters():
        expected[name] = torch.randn_like(p)
        p.grad = expected[name] * 1024.0
    assert scaler.unscale_and_check(optimizer) is True
    assert scaler.unscale_and_check(optimizer) is True  # idempotent: no second division
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, expected[name])


def test_overflow_skips_step_halves_scale_and_keeps_weights() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = DynamicLossScaler(init_scale=2.0**10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _backward(model, scaler, inject_inf=True)
    assert scaler.step(optimizer) is False
    assert scaler.get_scale() == 2.0**9
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    optimizer.zero_grad()
    _backward(model, scaler)
    assert scaler.step(optimizer) is True
    assert not torch.equal(model[0].weight, before["0.weight"])


def test_growth_after_interval_and_state_round_trip() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = DynamicLossScaler(init_scale=4.0, growth_interval=3)
    for i in range(3):
        optimizer.zero_grad()
        _backward(model, scaler)
        assert scaler.step(optimizer)
        assert scaler.get_scale() == (8.0 if i == 2 else 4.0)
    restored = DynamicLossScaler()
    restored.load_state_dict(scaler.state_dict())
    assert restored.state_dict() == scaler.state_dict()
    with pytest.raises(ValueError, match="missing"):
        restored.load_state_dict({"scale": 1.0})


def test_scale_sequence_matches_torch_grad_scaler() -> None:
    pattern = [False, False, True, False, False, False, True, False, False, False, False]  # True: inject inf
    model_a, model_b = _model(), _model()
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.01)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.01)
    ours = DynamicLossScaler(init_scale=256.0, growth_interval=2)
    reference = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=2)
    x, y = _batch()
    for inject in pattern:
        opt_a.zero_grad()
        opt_b.zero_grad()
        _backward(model_a, ours, inject_inf=inject)
        reference.scale(nn.functional.cross_entropy(model_b(x), y)).backward()
        if inject:
            model_b[0].weight.grad[0, 0] = math.inf
        ours.step(opt_a)
        reference.step(opt_b)
        reference.update()
        assert ours.get_scale() == reference.get_scale()
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_bf16_autocast_step_on_cpu_keeps_fp32_params() -> None:
    model = _model()
    trainer = MixedPrecisionTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert trainer.dtype == torch.bfloat16 and trainer.scaler is None
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x, y = _batch()
    first = trainer.train_step(x, y, nn.functional.cross_entropy)
    assert seen == [torch.bfloat16]
    assert first == {"loss": pytest.approx(first["loss"]), "scale": 1.0, "skipped": False}
    for _ in range(20):
        last = trainer.train_step(x, y, nn.functional.cross_entropy)
    assert last["loss"] < first["loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


def test_nan_loss_stops_and_keeps_last_good_state() -> None:
    model = _model()
    trainer = MixedPrecisionTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), snapshot_every=2)
    x, y = _batch()
    for _ in range(4):
        trainer.train_step(x, y, nn.functional.cross_entropy)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    assert trainer.last_good_state()["step"] == 4
    trainer.train_step(x, y, nn.functional.cross_entropy)  # step 5: no new snapshot yet
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 6.*step 4.*restore_last_good"):
        trainer.train_step(x, y, lambda out, t: out.sum() * math.nan)
    snapshot = trainer.last_good_state()
    assert snapshot["step"] == 4
    for k, v in snapshot["model"].items():
        assert torch.equal(v, good[k])
    trainer.restore_last_good()
    for k, v in model.state_dict().items():
        assert torch.equal(v, good[k])
    assert trainer.steps == 4


def test_fp16_autocast_overflow_backs_off_until_a_step_goes_through() -> None:
    """The CUDA recipe (float16 autocast + loss scaling) on the CPU's float16 autocast: a scale of 2**40 makes the
    real fp16 backward overflow, so steps are skipped (weights untouched) and the scale halves each time until the
    gradients fit; then the optimizer steps and training goes on."""
    model = _model()
    trainer = MixedPrecisionTrainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        dtype=torch.float16,
        device="cpu",
        scaler=DynamicLossScaler(init_scale=2.0**40),
    )
    seen: list[torch.dtype] = []
    model[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _batch()
    results = []
    while not results or results[-1]["skipped"]:
        results.append(trainer.train_step(x, y, nn.functional.cross_entropy))
        if results[-1]["skipped"]:
            assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        assert len(results) < 40
    scales = [r["scale"] for r in results]
    assert seen[0] == torch.float16 and len(results) > 1
    assert scales == [2.0**40 / 2**i for i in range(len(results))]  # halved after every overflow
    assert trainer.steps == 1 and not torch.equal(model[0].weight, before["0.weight"])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    first = results[0]["loss"]
    for _ in range(20):
        last = trainer.train_step(x, y, nn.functional.cross_entropy)
    assert last["loss"] < first


def test_rejects_non_fp32_master_weights() -> None:
    model = _model().to(torch.bfloat16)
    with pytest.raises(ValueError, match="model.float"):
        MixedPrecisionTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FP16 autocast with loss scaling needs a CUDA GPU")
def test_fp16_autocast_with_loss_scaling_on_cuda() -> None:
    model = _model().cuda()
    trainer = MixedPrecisionTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert trainer.dtype == torch.float16 and trainer.scaler is not None
    x, y = (t.cuda() for t in _batch())
    result = trainer.train_step(x, y, nn.functional.cross_entropy)
    assert result["scale"] == 2.0**16 and not result["skipped"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
