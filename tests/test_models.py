"""The course's reference CNN and its Conv2dWithReLU layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from actwidget.models import CNN, Conv2dWithReLU


def test_cnn_structure_and_output_shape():
    torch.manual_seed(0)
    model = CNN()
    layers = list(model.layers)
    assert [type(m) for m in layers] == [Conv2dWithReLU] * 4 + [nn.Conv2d]
    spec = [
        (1, 8, 5, 2, 2),
        (8, 16, 3, 2, 1),
        (16, 32, 3, 2, 1),
        (32, 64, 3, 2, 1),
        (64, 10, 3, 2, 1),
    ]
    for m, (cin, cout, k, s, p) in zip(layers, spec, strict=True):
        assert (m.in_channels, m.out_channels) == (cin, cout)
        assert m.kernel_size == (k, k) and m.stride == (s, s) and m.padding == (p, p)
        assert m.bias is not None
    assert [type(m) for m in model.children()] == [nn.Sequential]
    x = torch.randn(3, 1, 28, 28)
    out = model(x)
    assert out.shape == (3, 10)
    # The forward pass is the plain stack: conv + ReLU four times, then the last conv.
    h = x
    for m in layers[:4]:
        h = F.relu(F.conv2d(h, m.weight, m.bias, m.stride, m.padding))
        assert (h >= 0).all()
    h = F.conv2d(h, layers[4].weight, layers[4].bias, 2, 1)
    torch.testing.assert_close(out, h.view(3, -1))
    assert out.min() < 0  # the last layer has no ReLU
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_conv2d_with_relu_default_and_custom_nonlinearity():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9)
    relu = Conv2dWithReLU(3, 4, 3, stride=2, padding=1)
    assert isinstance(relu, nn.Conv2d)
    plain = F.conv2d(x, relu.weight, relu.bias, 2, 1)
    torch.testing.assert_close(relu(x), F.relu(plain))
    assert relu(x).shape == (2, 4, 5, 5)
    tanh = Conv2dWithReLU(3, 4, 3, nonlinearity=torch.tanh, bias=False)
    assert tanh.bias is None and tanh.stride == (1, 1) and tanh.padding == (0, 0)
    torch.testing.assert_close(tanh(x), torch.tanh(F.conv2d(x, tanh.weight)))
    leaky = Conv2dWithReLU(3, 4, 1, nonlinearity=nn.LeakyReLU(0.5), groups=1)
    y = leaky(x)
    torch.testing.assert_close(y, F.leaky_relu(F.conv2d(x, leaky.weight, leaky.bias), 0.5))
    assert (y < 0).any()
    ident = Conv2dWithReLU(3, 4, 3, nonlinearity=lambda t: t, padding=1, padding_mode="reflect")
    assert ident.padding_mode == "reflect"
    torch.testing.assert_close(
        ident(x), F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), ident.weight, ident.bias)
    )
    # Trainable like any conv: gradients reach the weights through the nonlinearity.
    relu(x).sum().backward()
    assert relu.weight.grad is not None and relu.weight.grad.abs().sum() > 0


CONV_ARGS = dict(
    in_channels=3,
    out_channels=4,
    kernel_size=(3, 2),
    stride=(2, 1),
    padding=(1, 2),
    dilation=(1, 2),
    groups=1,
    bias=False,
    padding_mode="replicate",
    device="cpu",
    dtype=torch.float64,
)


def test_conv2d_with_relu_takes_every_conv2d_argument_by_keyword_or_position():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    plain = nn.Conv2d(**CONV_ARGS)
    by_kw = Conv2dWithReLU(**CONV_ARGS)
    by_pos = Conv2dWithReLU(*CONV_ARGS.values())
    for m in (by_kw, by_pos):
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding"):
            assert getattr(m, attr) == getattr(plain, attr), attr
        assert (m.dilation, m.groups, m.padding_mode) == ((1, 2), 1, "replicate")
        assert m.bias is None and m.weight.dtype == torch.float64
        m.load_state_dict(plain.state_dict())
        torch.testing.assert_close(m(x), F.relu(plain(x)))
    # The course's forms, as written in its notebooks.
    course = Conv2dWithReLU(1, 8, kernel_size=5, stride=2, padding=2)
    assert (course.kernel_size, course.stride, course.padding) == ((5, 5), (2, 2), (2, 2))
    short = Conv2dWithReLU(8, 16, 3, 2, 1, nonlinearity=torch.tanh)
    assert (short.kernel_size, short.stride, short.padding) == ((3, 3), (2, 2), (1, 1))
    assert short.nonlinearity is torch.tanh
    grouped = Conv2dWithReLU(4, 8, 3, groups=2, padding="same", dilation=2)
    assert grouped(torch.randn(1, 4, 7, 7)).shape == (1, 8, 7, 7)


def test_conv2d_with_relu_rejects_what_conv2d_rejects():
    with pytest.raises(TypeError, match="kernal_size"):
        Conv2dWithReLU(1, 8, kernal_size=5)  # a typo is not swallowed
    with pytest.raises(TypeError):
        Conv2dWithReLU(1, 8)  # no kernel size
    with pytest.raises(TypeError):
        Conv2dWithReLU(1, 8, 3, 1, 0, 1, 1, True, "zeros", None, None, F.relu)  # keyword only
    with pytest.raises(ValueError, match="groups"):
        Conv2dWithReLU(3, 4, 3, groups=2)
