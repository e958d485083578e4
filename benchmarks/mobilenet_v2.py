"""A MobileNetV2-style network (inverted residuals, depthwise convolutions, ReLU6), for benchmarks.

Random weights: the benchmarks that use it measure calibration time, memory and latency, and output
agreement with FP32; accuracy claims use the real models (digits CNN, PaddleOCR).
"""

from __future__ import annotations


def mobilenet_v2(num_classes: int = 1000, width: float = 1.0, activation: str = "relu6", gamma_spread: float = 0.0):
    """`activation` relu6 (the original) or relu; `gamma_spread` > 0 draws BatchNorm gains as
    exp(N(0, spread)), the per-channel imbalance trained networks show after BatchNorm folding."""
    import torch
    from torch import nn

    def conv_bn(cin: int, cout: int, stride: int, groups: int = 1, kernel: int = 3, act: bool = True) -> nn.Sequential:
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        act_layer = nn.ReLU6(inplace=True) if activation == "relu6" else nn.ReLU(inplace=True)
        return nn.Sequential(*layers, act_layer) if act else nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            layers = [conv_bn(cin, hidden, 1, kernel=1)] if expand != 1 else []
            layers += [conv_bn(hidden, hidden, stride, groups=hidden), conv_bn(hidden, cout, 1, kernel=1, act=False)]
            self.block = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.block(x) if self.residual else self.block(x)

    settings = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]
    channels = int(32 * width)
    layers: list[nn.Module] = [conv_bn(3, channels, 2)]
    for expand, out, repeats, stride in settings:
        for i in range(repeats):
            layers.append(InvertedResidual(channels, int(out * width), stride if i == 0 else 1, expand))
            channels = int(out * width)
    layers += [
        conv_bn(channels, 1280, 1, kernel=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(1280, num_classes),
    ]
    model = nn.Sequential(*layers)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # plausible BatchNorm statistics so activations neither vanish nor explode
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                if gamma_spread > 0:
                    module.weight.copy_(torch.randn(module.weight.shape, generator=generator).mul(gamma_spread).exp())
                else:
                    module.weight.uniform_(0.5, 1.5, generator=generator)
    return model.eval()
