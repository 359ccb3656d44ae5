"""Unit tests for trainer/losses.py against METHOD.md section 3, worked by hand with K = 2.

Constants used below (lc = log cosh):
  lc(0.1) = 0.0049917, lc(0.1)^2 = 0.0000249170
  lc(0.2) = 0.0198681, lc(0.2)^2 = 0.000394740,  tanh(0.2) = 0.197375
  lc(0.3) = 0.0443408, lc(0.3)^2 = 0.00196610,   tanh(0.3) = 0.291313
  lc(0.4) = 0.0779535, lc(0.4)^2 = 0.00607675
  lc(0.5) = 0.1201145, lc(0.5)^2 = 0.0144275

Shared example (M = 1, K = 2):
  h_a = [0.2, 0.7] -> b_a = [0, 1]
  h_p = [0.4, 0.9] -> b_p = [0, 1]
  h_n = [0.6, 0.1] -> b_n = [1, 0]
"""

from __future__ import annotations

import math

import pytest
import torch

from dahash_index.train.losses import (
    BinaryBalanceLoss,
    DAHashLoss,
    IsometricQuantizationLoss,
    TripletLoss,
    quantization_error,
)


def _t(rows, grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def _example(grad: bool = False):
    return _t([[0.2, 0.7]], grad), _t([[0.4, 0.9]], grad), _t([[0.6, 0.1]], grad)


# Triplet batch (M = 2, K = 2):
#   t1: a=[0.2, 0.8] p=[0.4, 0.8] n=[0.2, 0.2]: d_ap^2 = 0.04, d_an^2 = 0.36
#   t2: a=[0.5, 0.5] p=[0.5, 0.5] n=[0.9, 0.2]: d_ap^2 = 0,    d_an^2 = 0.16 + 0.09 = 0.25
TRI_A = [[0.2, 0.8], [0.5, 0.5]]
TRI_P = [[0.4, 0.8], [0.5, 0.5]]
TRI_N = [[0.2, 0.2], [0.9, 0.2]]


def test_triplet_squared_by_hand():
    loss = TripletLoss(margin=0.5)
    # t1: 0.04 - 0.36 + 0.5 = 0.18; t2: 0 - 0.25 + 0.5 = 0.25; mean = 0.43 / 2 = 0.215
    assert float(loss(_t(TRI_A), _t(TRI_P), _t(TRI_N))) == pytest.approx(0.215)


def test_triplet_hinge_at_zero():
    # margin 0.3: t1: 0.04 - 0.36 + 0.3 = -0.02 -> 0; t2: 0 - 0.25 + 0.3 = 0.05; mean 0.025
    assert float(TripletLoss(0.3)(_t(TRI_A), _t(TRI_P), _t(TRI_N))) == pytest.approx(0.025)
    # margin 0.1: t1: -0.22 -> 0; t2: -0.15 -> 0; loss 0 and no gradient
    h = [_t(TRI_A, True), _t(TRI_P, True), _t(TRI_N, True)]
    value = TripletLoss(0.1)(*h)
    assert value.item() == 0.0
    value.backward()
    for x in h:
        assert torch.equal(x.grad, torch.zeros_like(x))


def test_triplet_plain_l2_by_hand():
    loss = TripletLoss(margin=0.6, squared=False)
    # t1: d_ap = 0.2, d_an = 0.6: 0.2 - 0.6 + 0.6 = 0.2
    # t2: d_ap = 0 (1e-6 with the sqrt eps), d_an = 0.5: 0 - 0.5 + 0.6 = 0.1; mean = 0.15
    assert float(loss(_t(TRI_A), _t(TRI_P), _t(TRI_N))) == pytest.approx(0.15, abs=1e-5)


def test_triplet_normalize():
    a, p, n = _t([[0.3, 0.4]]), _t([[0.6, 0.8]]), _t([[0.4, 0.3]])
    # unnormalised: d_ap^2 = 0.09 + 0.16 = 0.25, d_an^2 = 0.01 + 0.01 = 0.02: 0.25 - 0.02 + 0.2
    assert float(TripletLoss(0.2)(a, p, n)) == pytest.approx(0.43)
    # normalised: a -> [0.6, 0.8], p -> [0.6, 0.8], n -> [0.8, 0.6]
    # d_ap^2 = 0, d_an^2 = 0.04 + 0.04 = 0.08: 0 - 0.08 + 0.2 = 0.12
    assert float(TripletLoss(0.2, normalize=True)(a, p, n)) == pytest.approx(0.12)


def test_quantization_error_by_hand():
    h = _t([[0.2, 0.7], [0.5, 0.5], [0.0, 1.0], [0.6, 0.1]])
    q = quantization_error(h)
    assert q.shape == (4,)
    expected = [
        (0.000394740 + 0.00196610) / 2,  # x = [0.2, -0.3]: (lc(0.2)^2 + lc(0.3)^2)/2 = 0.00118042
        0.0144275,  # h = 0.5 -> b = 0, x = 0.5: lc(0.5)^2
        0.0,  # already binary
        (0.00607675 + 0.0000249170) / 2,  # x = [-0.4, 0.1]: 0.00305083
    ]
    assert q.tolist() == pytest.approx(expected, abs=1e-8)


def test_quantization_gradient_is_analytic_no_gradient_through_b():
    h = _t([[0.2, 0.7]], grad=True)
    quantization_error(h).sum().backward()
    # dQ/dh_k = (1/K) 2 lc(x) tanh(x), x = h - b = [0.2, -0.3], K = 2
    # k=0: 0.0198681 * 0.197375 = 0.00392147; k=1: 0.0443408 * -0.291313 = -0.0129170
    assert h.grad[0].tolist() == pytest.approx([0.00392147, -0.0129170], abs=1e-7)


def test_isometric_by_hand():
    # Q_a = (lc(0.2)^2 + lc(0.3)^2)/2 = 0.00118042
    # Q_p = Q_n = (lc(0.4)^2 + lc(0.1)^2)/2 = 0.00305083 (|0.6-1| = 0.4, |0.1-0| = 0.1)
    # each image is in two pairs: 2 Q_a + 2 Q_p + 2 Q_n = 0.00236084 + 0.0122033 = 0.0145642
    # pairs, mu (||h_i - h_j|| - ||b_i - b_j||)^2 / K:
    #   (a,p): h diff [-0.2, -0.2] -> sqrt(0.08) = 0.282843, b diff 0: 0.08 / 2 = 0.04
    #   (a,n): h diff [-0.4, 0.6] -> sqrt(0.52) = 0.721110, b diff [-1, 1] -> sqrt(2) = 1.414214
    #          (0.721110 - 1.414214)^2 / 2 = 0.480393 / 2 = 0.240196
    #   (p,n): h diff [-0.2, 0.8] -> sqrt(0.68) = 0.824621: (0.824621 - 1.414214)^2 / 2 = 0.173810
    #   sum = 0.454006
    a, p, n = _example()
    assert float(IsometricQuantizationLoss(mu=0.0)(a, p, n)) == pytest.approx(0.0145642, abs=1e-6)
    # mu = 1: 0.0145642 + 0.454006 = 0.468570
    assert float(IsometricQuantizationLoss(mu=1.0)(a, p, n)) == pytest.approx(0.468570, abs=1e-6)
    # mu = 2: 0.0145642 + 2 * 0.454006 = 0.922576
    assert float(IsometricQuantizationLoss(mu=2.0)(a, p, n)) == pytest.approx(0.922576, abs=1e-6)


def test_isometric_averages_over_batch():
    a, p, n = _example()
    # second triplet already binary and isometric: a = p = [1, 0], n = [0, 1]
    #   Q = 0; (a,p): 0 vs 0; (a,n), (p,n): sqrt(2) vs sqrt(2) -> 0
    a2 = torch.cat([a, _t([[1.0, 0.0]])])
    p2 = torch.cat([p, _t([[1.0, 0.0]])])
    n2 = torch.cat([n, _t([[0.0, 1.0]])])
    # mean over M = 2: (0.468570 + 0) / 2 = 0.234285
    assert float(IsometricQuantizationLoss(1.0)(a2, p2, n2)) == pytest.approx(0.234285, abs=1e-6)


def test_isometric_gradient_treats_b_as_constant():
    a, p, n = _example(grad=True)
    IsometricQuantizationLoss(mu=1.0)(a, p, n).backward()
    # dL/dh_a = 2 dQ_a/dh_a                                 (Q_a appears in (a,p) and (a,n))
    #         + (1/K) 2 (d_ap - 0) (h_a - h_p) / d_ap       = (h_a - h_p) = [-0.2, -0.2]
    #         + (1/K) 2 (d_an - sqrt2) (h_a - h_n) / d_an   = (1 - 1.414214/0.721110) [-0.4, 0.6]
    #                                                       = -0.961161 * [-0.4, 0.6]
    #                                                       = [0.384465, -0.576697]
    # 2 dQ_a/dh_a = 2 lc(x) tanh(x), x = [0.2, -0.3] = [0.00784293, -0.0258341]
    # k=0: 0.00784293 - 0.2 + 0.384465 = 0.192307; k=1: -0.0258341 - 0.2 - 0.576697 = -0.802531
    assert a.grad[0].tolist() == pytest.approx([0.192307, -0.802531], abs=1e-6)


def test_balance_push_and_equal_by_hand():
    a, p, n = _example()
    # push per image 0.25 - mean_k (h - 0.5)^2:
    #   a: 0.25 - (0.09 + 0.04)/2 = 0.185; p: 0.25 - (0.01 + 0.16)/2 = 0.165; n: same = 0.165
    #   mean = 0.515 / 3 = 0.171667
    # equal 'bit': bit means (0.2+0.4+0.6)/3 = 0.4, (0.7+0.9+0.1)/3 = 0.566667
    #   ((-0.1)^2 + 0.066667^2) / 2 = (0.01 + 0.0044444) / 2 = 0.0072222
    # equal 'image': image means 0.45, 0.65, 0.35 -> (0.0025 + 0.0225 + 0.0225) / 3 = 0.0158333
    only_push = BinaryBalanceLoss(lambda1=1.0, lambda2=0.0)
    assert float(only_push(a, p, n)) == pytest.approx(0.171667, abs=1e-6)
    only_bit = BinaryBalanceLoss(lambda1=0.0, lambda2=1.0, equal="bit")
    assert float(only_bit(a, p, n)) == pytest.approx(0.0072222, abs=1e-6)
    only_image = BinaryBalanceLoss(lambda1=0.0, lambda2=1.0, equal="image")
    assert float(only_image(a, p, n)) == pytest.approx(0.0158333, abs=1e-6)
    # lambda1 = 2, lambda2 = 3: 2 * 0.171667 + 3 * 0.0072222 = 0.343333 + 0.0216667 = 0.365
    assert float(BinaryBalanceLoss(2.0, 3.0)(a, p, n)) == pytest.approx(0.365, abs=1e-6)


def test_push_zero_at_ends_quarter_at_middle():
    loss = BinaryBalanceLoss(lambda1=1.0, lambda2=0.0)
    # every h_k in {0, 1}: (h - 0.5)^2 = 0.25 -> 0.25 - 0.25 = 0
    assert float(loss.push(_t([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]))) == pytest.approx(0.0)
    # every h_k = 0.5: 0.25 - 0 = 0.25
    assert float(loss.push(_t([[0.5, 0.5], [0.5, 0.5]]))) == pytest.approx(0.25)


def test_equal_bit_vs_image_differ():
    # every image is [1, 0]: image means 0.5 -> 'image' = 0
    # bit means 1 and 0 -> 'bit' = ((0.5)^2 + (-0.5)^2) / 2 = 0.25
    h = _t([[1.0, 0.0]])
    bit = BinaryBalanceLoss(0.0, 1.0, equal="bit")(h, h, h)
    image = BinaryBalanceLoss(0.0, 1.0, equal="image")(h, h, h)
    assert float(bit) == pytest.approx(0.25)
    assert float(image) == pytest.approx(0.0)


def test_balance_unknown_equal_refused():
    with pytest.raises(ValueError, match="equal must be one of"):
        BinaryBalanceLoss(equal="pixel")


def _dahash(**kw) -> DAHashLoss:
    args = dict(margin=0.5, alpha=2.0, beta=3.0, mu=1.0, lambda1=1.0, lambda2=1.0)
    args.update(kw)
    return DAHashLoss(**args)


def test_dahash_loss_total_by_hand():
    a, p, n = _example(grad=True)
    total, terms = _dahash()(a, p, n)
    # tri: d_ap^2 = 0.08, d_an^2 = 0.52: max(0, 0.08 - 0.52 + 0.5) = 0.06
    # iso (mu = 1) = 0.468570; bal (1, 1, 'bit') = 0.171667 + 0.0072222 = 0.178889
    # total = 0.06 + 2 * 0.468570 + 3 * 0.178889 = 0.06 + 0.937140 + 0.536667 = 1.533806
    assert set(terms) == {"tri", "iso", "bal", "total"}
    assert terms["tri"] == pytest.approx(0.06)
    assert terms["iso"] == pytest.approx(0.468570, abs=1e-6)
    assert terms["bal"] == pytest.approx(0.178889, abs=1e-6)
    assert terms["total"] == pytest.approx(1.533806, abs=1e-6)
    assert float(total) == pytest.approx(1.533806, abs=1e-6)
    total.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_dahash_loss_zero_weight_drops_term():
    a, p, n = _example()
    total, terms = _dahash(alpha=0.0)(a, p, n)
    # 0.06 + 3 * 0.178889 = 0.596667
    assert set(terms) == {"tri", "bal", "total"}
    assert float(total) == pytest.approx(0.596667, abs=1e-6)
    total, terms = _dahash(triplet_weight=0.0)(a, p, n)
    # 2 * 0.468570 + 3 * 0.178889 = 1.473806
    assert set(terms) == {"iso", "bal", "total"}
    assert float(total) == pytest.approx(1.473806, abs=1e-6)
    total, terms = _dahash(beta=0.0)(a, p, n)
    # 0.06 + 2 * 0.468570 = 0.997140
    assert set(terms) == {"tri", "iso", "total"}
    assert terms["total"] == pytest.approx(0.997140, abs=1e-6)


def test_dahash_loss_triplet_weight_scales():
    a, p, n = _example()
    total, terms = _dahash(alpha=0.0, beta=0.0, triplet_weight=0.5)(a, p, n)
    # 0.5 * 0.06 = 0.03; the logged 'tri' is the unweighted term
    assert terms["tri"] == pytest.approx(0.06)
    assert float(total) == pytest.approx(0.03)
    assert math.isclose(terms["total"], 0.03, abs_tol=1e-9)
