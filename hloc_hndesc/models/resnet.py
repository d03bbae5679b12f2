"""A minimal ResNet (18/34/50) whose module names and state-dict keys are torchvision's.

torchvision is not a dependency: this re-implements the architecture so that a
state dict saved from ``torchvision.models.resnetXX`` (ImageNet weights a user
already has on disk) loads by path. ``num_layers`` < 4 builds a truncated trunk
(e.g. up to ``layer3``, the "last block removed" variant used by HOW and CAPS);
the classifier head (``avgpool``/``fc``) is never built.

Geometry: every strided layer is an odd kernel with "same" padding, so cell ``i``
of the map at stride ``s`` has its receptive field centred on input pixel ``s * i``
(pixel centres at integer coordinates).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 - 3x3 (strided, torchvision v1.5) - 1x1 bottleneck with a shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}

#: stride of the output of layer1..layer4 with respect to the input image.
LAYER_STRIDES = (4, 8, 16, 32)


class ResNet(nn.Module):
    """ResNet trunk ``conv1, bn1, relu, maxpool, layer1..layer<num_layers>`` (torchvision names)."""

    def __init__(self, arch: str = "resnet18", num_layers: int = 4) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown ResNet {arch!r}; choose one of {sorted(ARCHS)}")
        if not 1 <= num_layers <= 4:
            raise ValueError(f"num_layers must be in 1..4, got {num_layers}")
        block, counts = ARCHS[arch]
        self.arch = arch
        self.num_layers = num_layers
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        for i in range(num_layers):
            layer = self._make_layer(block, widths[i], counts[i], stride=1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", layer)
        #: channels of each built layer's output.
        self.channels = [w * block.expansion for w in widths[:num_layers]]
        self._init_weights()

    @property
    def out_channels(self) -> int:
        """Channels of the last built layer."""
        return self.channels[-1]

    @property
    def stride(self) -> int:
        """Stride of the last built layer with respect to the input."""
        return LAYER_STRIDES[self.num_layers - 1]

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 -> bn1 -> relu -> maxpool (stride 4)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of layer1..layer<num_layers>."""
        outs = []
        x = self.stem(x)
        for i in range(self.num_layers):
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_layers(x)[-1]


def resnet18(num_layers: int = 4) -> ResNet:
    """ResNet-18 trunk with ``num_layers`` residual stages."""
    return ResNet("resnet18", num_layers)


def resnet34(num_layers: int = 4) -> ResNet:
    """ResNet-34 trunk with ``num_layers`` residual stages."""
    return ResNet("resnet34", num_layers)


def resnet50(num_layers: int = 4) -> ResNet:
    """ResNet-50 trunk with ``num_layers`` residual stages."""
    return ResNet("resnet50", num_layers)


def select_torchvision_state(
    state: Mapping[str, torch.Tensor], num_layers: int, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Keep the keys of a torchvision ResNet state dict that a ``num_layers`` trunk has.

    Drops ``fc.*`` and the layers beyond ``num_layers``; prepends ``prefix`` (e.g.
    ``"backbone."``) so the result can be merged into a bigger network's state dict.
    """
    dropped = ("fc.",) + tuple(f"layer{i}." for i in range(num_layers + 1, 5))
    return {prefix + k: v for k, v in state.items() if not k.startswith(dropped)}
