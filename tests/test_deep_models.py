"""Deep models (issue: hundreds of hooked layers): a TransformerEncoder with every Linear,
LayerNorm and attention module hooked, and a 100-block MLP; stats every batch, the widget's
overview, selection and filter."""

from __future__ import annotations

import numpy as np
import torch
from conftest import no_hooks
from torch import nn

from actwidget.recorder import StatsHooks
from actwidget.stats import StatsConfig
from actwidget.widget import ActivationWidget

HOOKED = (nn.Linear, nn.LayerNorm, nn.MultiheadAttention)


class Encoder(nn.Module):
    """A token embedding, a 6-layer TransformerEncoder (d 64), a classification head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 64)
        layer = nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=6, enable_nested_tensor=False)
        self.head = nn.Linear(64, 10)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)).mean(1))


def train(model, hooks, steps: int, make_batch) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with hooks:
        for _ in range(steps):
            x, y = make_batch()
            out = model(x)
            loss = out.pow(2).mean() if y is None else nn.functional.cross_entropy(out, y)
            loss.backward()
            opt.step()
            opt.zero_grad()


def test_transformer_encoder_every_linear_norm_and_attention_per_batch():
    torch.manual_seed(0)
    model = Encoder()
    hooks = StatsHooks(
        mod_filter=lambda m: isinstance(m, HOOKED), model=model, config=StatsConfig(grads=True)
    )
    names = hooks.names
    assert len(names) == 6 * 6 + 1  # per layer: attention, its out_proj, 2 Linear, 2 LayerNorm
    assert "encoder.layers.3.linear1 (Linear)" in names
    assert "encoder.layers.0.self_attn (MultiheadAttention)" in names
    g = torch.Generator().manual_seed(0)
    train(model, hooks, 5, lambda: (torch.randint(0, 100, (8, 12), generator=g),
                                    torch.randint(0, 10, (8,), generator=g)))  # fmt: skip
    stats = hooks.stats
    for name in names:
        s = stats[name]
        if ".out_proj" in name:  # attention uses its weights directly: never called
            assert len(s) == 0, name
            continue
        assert len(s) == 5 and (s.batches == 1).all(), name
        np.testing.assert_array_equal(s.batch, np.arange(5))
        assert np.isfinite(s.mean).all() and (s.std > 0).all(), name
        assert (s.grad_std > 0).all(), name  # gradients reach every called layer
        assert np.isnan(s.dead).all(), name  # signed outputs: no unit is judged dead
    # The attention output (a tuple) is recorded from its first tensor: (batch, time, 64).
    attn = stats["encoder.layers.0.self_attn (MultiheadAttention)"]
    assert (attn.numel == 8 * 12 * 64).all()
    assert no_hooks(model)
    w = ActivationWidget(hooks)
    assert w.overview.rows == len(names)
    assert len(w.visible_layers) == 5  # a few, spread over the depth
    w.show_layers("encoder.layers.*.linear1*")
    assert w.visible_layers == [n for n in names if ".linear1 " in n]
    w.show_layers("norm2")  # a substring
    assert len(w.visible_layers) == 6
    w.close()


def test_a_100_block_mlp_records_every_block_every_batch():
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(100) for m in (nn.Linear(32, 32), nn.ReLU())])
    relus = [m for m in model if isinstance(m, nn.ReLU)]
    hooks = StatsHooks(relus, model=model, alerts=False)
    g = torch.Generator().manual_seed(0)
    train(model, hooks, 4, lambda: (torch.randn(16, 32, generator=g), None))
    stats = hooks.stats
    assert len(stats) == 100
    assert all(len(s) == 4 and (s.batch == np.arange(4)).all() for s in stats.values())
    w = ActivationWidget(hooks)
    assert w.overview.rows == 100 and w.overview.heat.color.shape == (100, 4)
    w.close()
