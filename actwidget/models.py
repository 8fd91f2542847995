"""The reference network of the course notebooks: a stack of stride-2 convolutions."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CNN", "Conv2dWithReLU"]


class Conv2dWithReLU(nn.Conv2d):
    """A `Conv2d` followed by a nonlinearity (ReLU by default), hooked as one layer.

    Takes every `nn.Conv2d` argument, by position or by keyword, as the course's layer does
    (`Conv2dWithReLU(1, 8, kernel_size=5, stride=2, padding=2)`, `Conv2dWithReLU(8, 16, 3,
    2, 1)`); `nonlinearity` only by keyword.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        nonlinearity: Callable[[torch.Tensor], torch.Tensor] = F.relu,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
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
            Conv2dWithReLU(1, 8, kernel_size=5, stride=2, padding=2),
            Conv2dWithReLU(8, 16, kernel_size=3, stride=2, padding=1),
            Conv2dWithReLU(16, 32, kernel_size=3, stride=2, padding=1),
            Conv2dWithReLU(32, 64, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(64, 10, kernel_size=3, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).view(x.shape[0], -1)
