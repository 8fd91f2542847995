"""The reference network of the course notebooks: a stack of stride-2 convolutions."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CNN", "Conv2dWithReLU"]


class Conv2dWithReLU(nn.Conv2d):
    """A `Conv2d` followed by a nonlinearity (ReLU by default), hooked as one layer."""

    def __init__(
        self,
        *args,
        nonlinearity: Callable[[torch.Tensor], torch.Tensor] = F.relu,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            *args,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self.nonlinearity = nonlinearity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinearity(super().forward(x))


class CNN(nn.Module):
    """Four conv+ReLU layers (1->8->16->32->64, stride 2) and a final conv to 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            Conv2dWithReLU(1, 8, 5, stride=2, padding=2),
            Conv2dWithReLU(8, 16, 3, stride=2, padding=1),
            Conv2dWithReLU(16, 32, 3, stride=2, padding=1),
            Conv2dWithReLU(32, 64, 3, stride=2, padding=1),
            nn.Conv2d(64, 10, 3, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).view(x.shape[0], -1)
