"""Unit tests for dahash_index/network.py against METHOD.md sections 1-2.

The attention is checked on channels=4, reduction=2 (hidden width 2) with weights set by
hand; sigma values: s(2) = 0.880797, s(1) = 0.731059, s(0.5) = 0.622459, s(0) = 0.5,
s(-1) = 0.268941, s(-1.5) = 0.182426, s(-2) = 0.119203.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dahash_index.model.network import (
    ChannelAttention,
    HashNet,
    NetConfig,
    dahash_head,
    dahash_net,
    milan_head,
    milan_net,
)

X = torch.tensor([[1.0, 2.0, -1.0, 0.5]])


def _set(branch: nn.Sequential, w1, w2) -> None:
    # g(x) = W2 . ReLU(W1 . x): METHOD.md's branches have no biases.
    assert branch[0].bias is None and branch[2].bias is None
    with torch.no_grad():
        branch[0].weight.copy_(torch.tensor(w1))
        branch[2].weight.copy_(torch.tensor(w2))


def _attention(mode: str) -> ChannelAttention:
    att = ChannelAttention(channels=4, reduction=2, mode=mode)
    if att.branch_a is not None:
        # W_A1 x = [x0, x2] = [1, -1] -> ReLU [1, 0]
        # g_A = W_A2 [1, 0] = [1, 0, -1, 0.5]
        _set(
            att.branch_a,
            [[1.0, 0, 0, 0], [0, 0, 1.0, 0]],
            [[1.0, 0], [0, 1.0], [-1.0, 0], [0.5, 0]],
        )
    if att.branch_b is not None:
        # W_B1 x = [x1, -2 x3] = [2, -1] -> ReLU [2, 0]
        # g_B = W_B2 [2, 0] = [0.5*2, 0, 0, -1*2] = [1, 0, 0, -2]
        _set(
            att.branch_b,
            [[0, 1.0, 0, 0], [0, 0, 0, -2.0]],
            [[0.5, 0], [0, 0], [0, 1.0], [-1.0, 0]],
        )
    return att


def _close(t: torch.Tensor, expected: list[float]) -> None:
    assert t.shape == (1, len(expected))
    assert t[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_dual_fuses_logits():
    att = _attention("dual")
    # g_A + g_B = [2, 0, -1, -1.5] -> w = [s(2), s(0), s(-1), s(-1.5)]
    _close(att.weights(X), [0.880797, 0.5, 0.268941, 0.182426])
    # x * w = [1*0.880797, 2*0.5, -1*0.268941, 0.5*0.182426]
    _close(att(X), [0.880797, 1.0, -0.268941, 0.091213])


def test_dual_literal_fuses_sigmoids():
    att = _attention("dual-literal")
    # s(g_A) + s(g_B) = [0.731059+0.731059, 0.5+0.5, 0.268941+0.5, 0.622459+0.119203]
    #                 = [1.462117, 1.0, 0.768941, 0.741662]
    # w = s(...) = [0.811856, 0.731059, 0.683292, 0.677359]
    _close(att.weights(X), [0.811856, 0.731059, 0.683292, 0.677359])
    # x * w = [0.811856, 2*0.731059, -0.683292, 0.5*0.677359]
    _close(att(X), [0.811856, 1.462117, -0.683292, 0.338680])


def test_single_uses_branch_a_only():
    att = _attention("single")
    assert att.branch_b is None
    # w = s(g_A) = [s(1), s(0), s(-1), s(0.5)]
    _close(att.weights(X), [0.731059, 0.5, 0.268941, 0.622459])
    _close(att(X), [0.731059, 1.0, -0.268941, 0.311230])


def test_none_is_identity():
    att = ChannelAttention(channels=4, reduction=2, mode="none")
    assert att.branch_a is None and att.branch_b is None
    assert list(att.parameters()) == []
    _close(att.weights(X), [1.0, 1.0, 1.0, 1.0])
    _close(att(X), [1.0, 2.0, -1.0, 0.5])


def test_branches_are_independent():
    att = ChannelAttention(channels=4, reduction=2, mode="dual")
    assert att.branch_a[0].weight.data_ptr() != att.branch_b[0].weight.data_ptr()
    assert not torch.equal(att.branch_a[0].weight, att.branch_b[0].weight)


def test_branch_shapes_c_over_r():
    att = ChannelAttention(channels=2048, reduction=16, mode="dual")
    for branch in (att.branch_a, att.branch_b):
        # W1: C/r x C = 128 x 2048, ReLU, W2: C x C/r = 2048 x 128
        assert branch[0].weight.shape == (128, 2048)
        assert isinstance(branch[1], nn.ReLU)
        assert branch[2].weight.shape == (2048, 128)


def test_unknown_mode_refused():
    with pytest.raises(ValueError, match="attention must be one of"):
        ChannelAttention(channels=4, reduction=2, mode="triple")
    with pytest.raises(ValueError, match="attention must be one of"):
        dahash_net(bits=8, attention="Dual")


def _linear_shapes(head: nn.Sequential) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)]


def test_dahash_head_layers():
    head = dahash_head(2048, 32)
    assert _linear_shapes(head) == [(2048, 2048), (2048, 512), (512, 32)]
    acts = [m for m in head if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.Sigmoid))]
    assert [type(m) for m in acts] == [nn.ReLU, nn.ReLU, nn.Sigmoid]
    assert isinstance(head[-1], nn.Sigmoid)
    # dropout defaults to 0: the plain head of METHOD.md
    assert all(m.p == 0.0 for m in head if isinstance(m, nn.Dropout))


def test_milan_head_layers():
    head = milan_head(2048, 16)
    assert _linear_shapes(head) == [(2048, 1024), (1024, 512), (512, 16)]
    acts = [m for m in head if not isinstance(m, nn.Linear)]
    assert [type(m) for m in acts] == [nn.LeakyReLU, nn.LeakyReLU, nn.Sigmoid]
    assert all(m.negative_slope == 0.2 for m in acts[:2])


@pytest.mark.parametrize("mode", ["dual", "dual-literal", "single", "none"])
def test_dahash_net_output_range(mode):
    torch.manual_seed(0)
    net = dahash_net(bits=16, attention=mode).eval()
    assert net.attention.mode == mode
    with torch.no_grad():
        h = net(torch.randn(3, 2048))
    assert h.shape == (3, 16)
    assert bool(((h > 0) & (h < 1)).all())


def test_milan_net_structure_and_range():
    torch.manual_seed(0)
    net = milan_net(bits=8).eval()
    assert net.config == NetConfig(bits=8, head="milan", attention="none")
    assert net.attention.mode == "none"
    assert _linear_shapes(net.head) == [(2048, 1024), (1024, 512), (512, 8)]
    with torch.no_grad():
        h = net(torch.randn(2, 2048))
    assert h.shape == (2, 8)
    assert bool(((h > 0) & (h < 1)).all())


def test_hashnet_is_head_after_attention():
    torch.manual_seed(0)
    net = HashNet(NetConfig(bits=8, attention="single", reduction=16, in_features=32)).eval()
    x = torch.randn(2, 32)
    with torch.no_grad():
        expected = net.head(x * net.attention.weights(x))
        assert torch.allclose(net(x), expected)


def test_config_roundtrip():
    cfg = NetConfig(bits=48, head="dahash", attention="dual-literal", reduction=8, in_features=64)
    net = HashNet(NetConfig(**cfg.to_dict()))
    assert net.config == cfg
    # hidden width C/r = 64/8 = 8
    assert net.attention.branch_a[0].weight.shape == (8, 64)


@pytest.mark.parametrize("bits", [0, 12, 20, 63])
def test_bits_not_multiple_of_8_refused(bits):
    with pytest.raises(ValueError, match="multiple of 8"):
        dahash_net(bits=bits)
    with pytest.raises(ValueError, match="multiple of 8"):
        milan_net(bits=bits)


def test_unknown_head_refused():
    with pytest.raises(ValueError, match="head must be one of"):
        HashNet(NetConfig(bits=8, head="resnet"))
