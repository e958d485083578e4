"""Structured channel pruning on real torch models: plain conv nets, depthwise-separable blocks, residual groups
and concatenation are physically shrunk, consumers are sliced consistently (zeroed channels prune losslessly),
and the ONNX export gets smaller and cheaper."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgekit.compress.structured import ChannelPruneError, prune_channels  # noqa: E402
from edgekit.inspect import inspect_model  # noqa: E402
from edgekit.model import Model  # noqa: E402


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_bn(model: nn.Module) -> None:
    """Give every BatchNorm non-trivial statistics so slicing mistakes change the output."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)


def zero_channels(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, channels: list[int]) -> None:
    """Make `channels` of conv (+ its BN) output exactly zero, so removing them must not change the output."""
    with torch.no_grad():
        conv.weight[channels] = 0
        if conv.bias is not None:
            conv.bias[channels] = 0
        if bn is not None:
            bn.bias[channels] = 0
            bn.running_mean[channels] = 0


def conv_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )
    randomize_bn(net)
    return net.eval()


class DepthwiseSeparable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.dw_bn = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.pw_bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = nn.functional.relu6(self.dw_bn(self.dw(x)))
        x = nn.functional.relu(self.pw_bn(self.pw(x)))
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


class Residual(nn.Module):
    """Two branches added (conv_b + shortcut conv_s), then an identity residual around conv_c."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(8)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(8, 16, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(16)
        self.conv_s = nn.Conv2d(8, 16, 1)
        self.bn_s = nn.BatchNorm2d(16)
        self.conv_c = nn.Conv2d(16, 16, 3, padding=1)
        self.bn_c = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        y = torch.relu(self.bn_a(self.conv_a(x)))
        y = torch.relu(self.bn_b(self.conv_b(y)) + self.bn_s(self.conv_s(x)))
        z = torch.relu(self.bn_c(self.conv_c(y)) + y)
        return self.fc(z.mean((2, 3)))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(3, 6, 3, padding=1)
        self.right = nn.Conv2d(3, 10, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
        return self.head(x).mean((2, 3))


def example(shape: tuple[int, ...] = (2, 3, 8, 8), seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# -- plain conv net -----------------------------------------------------------------------------------------------


def test_conv_net_shrinks_by_expected_params_and_input_is_untouched():
    net, x = conv_net(), example()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    pruned, report = prune_channels(net, x, ratio=0.5)
    assert [m.out_channels for m in (pruned[0], pruned[3])] == [4, 8]
    assert pruned[1].num_features == 4 and pruned[4].num_features == 8 and pruned[3].in_channels == 4
    assert pruned[8].in_features == 8 * 16
    expected = (3 * 4 * 9 + 4) + 2 * 4 + (4 * 8 * 9 + 8) + 2 * 8 + (8 * 16 * 10 + 10)
    assert n_params(pruned) == expected == report.params_after
    assert report.params_before == n_params(net)
    assert report.layer("0").before == 8 and report.layer("0").after == 4
    assert run(pruned, x).shape == (2, 10)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    assert net[0].out_channels == 8


def test_ratio_zero_is_identical():
    for net, shape in [(conv_net(), (2, 3, 8, 8)), (DepthwiseSeparable(), (2, 3, 8, 8)), (Residual(), (2, 3, 8, 8))]:
        randomize_bn(net)
        x = example(shape)
        pruned, report = prune_channels(net, x, ratio=0.0)
        assert torch.equal(run(pruned, x), run(net, x))
        assert report.params_after == report.params_before


def test_conv_net_zeroed_channels_prune_losslessly():
    net, x = conv_net(), example()
    zero_channels(net[0], net[1], [1, 5])
    zero_channels(net[3], net[4], [0, 3, 7, 9])
    pruned, _ = prune_channels(net, x, ratio={"0": 0.25, "3": 0.25})
    assert pruned[0].out_channels == 6 and pruned[3].out_channels == 12
    keep0 = [c for c in range(8) if c not in (1, 5)]
    assert torch.equal(pruned[0].weight, net[0].weight[keep0])
    assert torch.allclose(run(pruned, x), run(net, x), atol=1e-5)


def test_bn_gamma_picks_smallest_gamma():
    net, x = conv_net(), example()
    gammas = torch.tensor([0.9, -0.05, 0.7, 0.2, -1.2, 0.01, 0.5, 0.3])
    with torch.no_grad():
        net[1].weight.copy_(gammas)
    pruned, _ = prune_channels(net, x, ratio={"0": 0.5}, criterion="bn_gamma")
    keep = [0, 2, 4, 6]  # the four largest |gamma|
    assert torch.equal(pruned[1].weight, gammas[keep])
    assert torch.equal(pruned[0].weight, net[0].weight[keep])


def test_l2_criterion_and_bn_gamma_needs_a_batchnorm():
    pruned, _ = prune_channels(Concat(), example(), ratio=0.5, criterion="l2")
    assert pruned.left.out_channels == 3
    with pytest.raises(ValueError, match="'left'"):
        prune_channels(Concat(), example(), ratio=0.5, criterion="bn_gamma")


def test_ratio_that_empties_a_layer_raises_naming_it():
    with pytest.raises(ValueError, match="'3'"):
        prune_channels(conv_net(), example(), ratio={"3": 1.0})
    with pytest.raises(ValueError, match="layer '0'"):
        prune_channels(conv_net(), example(), ratio=1.0)
    with pytest.raises(ValueError, match="not a Conv2d"):
        prune_channels(conv_net(), example(), ratio={"1": 0.5})


def test_high_ratio_keeps_one_channel():
    pruned, _ = prune_channels(conv_net(), example(), ratio=0.99)
    assert pruned[0].out_channels == 1 and pruned[3].out_channels == 1
    assert run(pruned, example()).shape == (2, 10)


# -- depthwise separable -------------------------------------------------------------------------------------------


def test_depthwise_follows_its_producer():
    net, x = DepthwiseSeparable(), example()
    randomize_bn(net)
    pruned, report = prune_channels(net, x, ratio=0.5)
    assert pruned.stem.out_channels == 8
    assert (pruned.dw.in_channels, pruned.dw.out_channels, pruned.dw.groups) == (8, 8, 8)
    assert pruned.dw_bn.num_features == 8 and pruned.pw.in_channels == 8
    assert pruned.pw.out_channels == 16 and pruned.fc.in_features == 16
    expected = (3 * 8 * 9 + 8) + 16 + 8 * 9 + 16 + (8 * 16 + 16) + 32 + (16 * 10 + 10)
    assert n_params(pruned) == expected
    assert report.layer("dw").kind == "depthwise"
    assert run(pruned, x).shape == (2, 10)


def test_depthwise_zeroed_channels_prune_losslessly():
    net, x = DepthwiseSeparable(), example()
    randomize_bn(net)
    dropped = [0, 2, 3, 8, 11, 12, 14, 15]
    zero_channels(net.stem, net.stem_bn, dropped)
    with torch.no_grad():  # the depthwise conv sees zeros on those channels; its BN must map zero to zero
        net.dw_bn.bias[dropped] = 0
        net.dw_bn.running_mean[dropped] = 0
    zero_channels(net.pw, net.pw_bn, list(range(0, 32, 2)))
    pruned, _ = prune_channels(net, x, ratio=0.5)
    assert torch.equal(pruned.dw.weight, net.dw.weight[[c for c in range(16) if c not in dropped]])
    assert torch.allclose(run(pruned, x), run(net, x), atol=1e-5)


def test_excluded_depthwise_blocks_its_producer():
    pruned, report = prune_channels(DepthwiseSeparable(), example(), ratio=0.5, exclude=["dw"])
    assert pruned.stem.out_channels == 16 and pruned.pw.out_channels == 16
    assert "excluded" in report.skipped["stem"]


# -- residual -------------------------------------------------------------------------------------------------------


def test_residual_group_is_pruned_jointly():
    net, x = Residual(), example()
    randomize_bn(net)
    pruned, report = prune_channels(net, x, ratio=0.5)
    assert ("conv_b", "conv_c", "conv_s") in [tuple(sorted(g)) for g in report.groups]
    assert pruned.conv_b.out_channels == pruned.conv_s.out_channels == pruned.conv_c.out_channels == 8
    assert pruned.conv_c.in_channels == 8 and pruned.fc.in_features == 8
    assert pruned.stem.out_channels == 4 and pruned.conv_a.in_channels == 4 and pruned.conv_s.in_channels == 4
    before, after = n_params(net), n_params(pruned)
    expected = (
        (3 * 4 * 9 + 4)
        + 8
        + (4 * 4 * 9 + 4)
        + 8
        + (4 * 8 * 9 + 8)
        + 16
        + (4 * 8 + 8)
        + 16
        + (8 * 8 * 9 + 8)
        + 16
        + (8 * 5 + 5)
    )
    assert after == expected < before
    assert run(pruned, x).shape == (2, 5)


def test_coupled_keep_leaves_the_residual_stream_whole():
    net, x = Residual(), example()
    randomize_bn(net)
    pruned, report = prune_channels(net, x, ratio=0.5, coupled="keep")
    assert pruned.conv_b.out_channels == pruned.conv_s.out_channels == pruned.conv_c.out_channels == 16
    assert pruned.stem.out_channels == 4 and pruned.conv_a.out_channels == 4  # inside the block: pruned
    assert "element-wise" in report.skipped["conv_c"] and "conv_b" in report.skipped["conv_c"]
    assert run(pruned, x).shape == (2, 5)
    with pytest.raises(ValueError, match="coupled"):
        prune_channels(net, x, ratio=0.5, coupled="drop")  # type: ignore[arg-type]


def test_residual_zeroed_channels_prune_losslessly():
    net, x = Residual(), example()
    randomize_bn(net)
    group = [1, 4, 6, 7, 9, 10, 13, 14]
    for conv, bn in [(net.conv_b, net.bn_b), (net.conv_s, net.bn_s), (net.conv_c, net.bn_c)]:
        zero_channels(conv, bn, group)
    zero_channels(net.stem, net.stem_bn, [0, 5])
    zero_channels(net.conv_a, net.bn_a, [2, 3, 7])
    pruned, _ = prune_channels(net, x, ratio={"stem": 0.25, "conv_a": 0.375, "conv_b": 0.5, "conv_s": 0.5})
    keep = [c for c in range(16) if c not in group]
    for name in ("conv_b", "conv_s", "conv_c"):  # one set of kept indices for the whole group
        assert torch.equal(getattr(pruned, name).bias, getattr(net, name).bias[keep])
    assert torch.equal(pruned.bn_c.weight, net.bn_c.weight[keep])
    assert torch.allclose(run(pruned, x), run(net, x), atol=1e-5)


def test_coupled_group_members_must_share_a_ratio():
    with pytest.raises(ValueError, match="share one ratio"):
        prune_channels(Residual(), example(), ratio={"conv_b": 0.5, "conv_s": 0.25})


def test_add_on_model_input_and_output_stays_unpruned():
    class AddInput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.out = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.conv(x) + x)

    pruned, report = prune_channels(AddInput(), example(), ratio=0.5)
    assert pruned.conv.out_channels == 3 and pruned.out.out_channels == 4
    assert "model input" in report.skipped["conv"] and "model output" in report.skipped["out"]


def test_untraceable_model_raises_a_clear_error():
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(ChannelPruneError, match="torch.fx cannot trace Dynamic"):
        prune_channels(Dynamic(), example(), ratio=0.5)


def test_unknown_op_leaves_its_producer_unpruned():
    class Slicer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(x)[:, :4]).mean((2, 3))

    pruned, report = prune_channels(Slicer(), example(), ratio=0.5)
    assert pruned.conv.out_channels == 8 and "getitem" in report.skipped["conv"]


# -- concatenation ----------------------------------------------------------------------------------------------------


def test_concat_maps_channel_offsets():
    net, x = Concat(), example()
    zero_channels(net.left, None, [0, 4, 5])
    zero_channels(net.right, None, [1, 2, 3, 6, 9])
    pruned, _ = prune_channels(net, x, ratio={"left": 0.5, "right": 0.5})
    assert (pruned.left.out_channels, pruned.right.out_channels, pruned.head.in_channels) == (3, 5, 8)
    assert torch.allclose(run(pruned, x), run(net, x), atol=1e-6)


# -- export -----------------------------------------------------------------------------------------------------------


def mobilenetish(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU6(),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(),
        ]

    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
    for cin, cout, stride in [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1)]:
        layers += block(cin, cout, stride)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10)]
    net = nn.Sequential(*layers)
    randomize_bn(net)
    return net.eval()


def ort_latency_ms(model: Model, x: np.ndarray, runs: int = 30) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.to_bytes(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(3):
        session.run(None, {name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def test_onnx_export_is_smaller_cheaper_and_runs():
    net, x = mobilenetish(), example((1, 3, 64, 64))
    pruned, report = prune_channels(net, x, ratio=0.5)
    assert report.params_after < report.params_before / 2
    dense_onnx = Model.from_torch(net, x, dynamic_batch=False)
    pruned_onnx = Model.from_torch(pruned, x, dynamic_batch=False)
    assert len(pruned_onnx.to_bytes()) < len(dense_onnx.to_bytes())
    dense_macs = inspect_model(dense_onnx).totals.macs
    pruned_macs = inspect_model(pruned_onnx).totals.macs
    assert dense_macs is not None and pruned_macs is not None and pruned_macs < dense_macs / 2
    feed = x.numpy()
    dense_ms, pruned_ms = ort_latency_ms(dense_onnx, feed), ort_latency_ms(pruned_onnx, feed)
    print(f"ORT CPU latency (1 thread): dense {dense_ms:.3f} ms, 50% channels pruned {pruned_ms:.3f} ms")
    print(f"MACs {dense_macs} -> {pruned_macs}, bytes {len(dense_onnx.to_bytes())} -> {len(pruned_onnx.to_bytes())}")


def test_broadcast_gate_blocks_the_gated_channels():
    class SqueezeExcite(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.reduce = nn.Conv2d(8, 4, 1)
            self.expand = nn.Conv2d(4, 8, 1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            gate = torch.sigmoid(self.expand(torch.relu(self.reduce(y.mean((2, 3), keepdim=True)))))
            return self.head(y * gate).mean((2, 3))

    net, x = SqueezeExcite(), example()
    pruned, report = prune_channels(net, x, ratio=0.5)
    assert pruned.conv.out_channels == 8 and pruned.expand.out_channels == 8
    assert pruned.reduce.out_channels == 2 and pruned.expand.in_channels == 2
    assert "conv" in report.skipped and run(pruned, x).shape == (2, 2)


def test_multiple_of_rounds_kept_channels_and_reports_layers_it_cannot_shrink() -> None:
    net = conv_net()
    x = torch.randn(2, 3, 8, 8)
    # 16 channels at ratio 0.3: round(4.8)=5 removed -> 11 kept exactly, 8 with multiple_of=8
    exact = prune_channels(net, x, ratio=0.3).model
    rounded = prune_channels(net, x, ratio=0.3, multiple_of=8)
    assert exact[3].out_channels == 11
    assert rounded.model[3].out_channels == 8 and rounded.model[4].num_features == 8
    assert rounded.model[8].in_features == 8 * 4 * 4
    # the first conv has 8 channels: one multiple of 8 is all of them, so it stays and the report says why
    assert rounded.model[0].out_channels == 8
    assert "multiple of 8" in rounded.report.skipped["0"]
    assert rounded.model(x).shape == (2, 10)


def test_multiple_of_must_be_positive() -> None:
    with pytest.raises(ValueError, match="multiple_of"):
        prune_channels(conv_net(), torch.randn(1, 3, 8, 8), ratio=0.5, multiple_of=0)
