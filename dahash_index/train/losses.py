"""The three losses of METHOD.md section 3, on hash-layer outputs h in [0, 1]^K.

Every loss takes the anchor, positive and negative outputs h_a, h_p, h_n, each (M, K)
float, and returns a scalar averaged over the M triplets. Binary codes b = (h > 0.5) are
constants: no gradient flows through them.
"""

from __future__ import annotations

import torch
from torch import nn

EQUAL_MODES = ("bit", "image")


def _distance(x: torch.Tensor, y: torch.Tensor, squared: bool) -> torch.Tensor:
    """Row-wise ||x - y||^2 (or ||x - y||): (M, K), (M, K) -> (M,)."""
    d2 = (x - y).pow(2).sum(dim=1)
    # The eps keeps the gradient of sqrt finite when two outputs coincide.
    return d2 if squared else torch.sqrt(d2 + 1e-12)


def _binary(h: torch.Tensor) -> torch.Tensor:
    return (h > 0.5).to(h.dtype).detach()


class TripletLoss(nn.Module):
    """L_tri = mean_M max(0, d(h_a, h_p) - d(h_a, h_n) + margin).

    d is the squared L2 distance (the continuous counterpart of Hamming distance, METHOD.md's
    choice) or, with ``squared=False``, the plain L2 distance. ``normalize=True`` first scales
    every output to unit L2 norm (MiLAN's formulation).
    """

    def __init__(self, margin: float, squared: bool = True, normalize: bool = False) -> None:
        super().__init__()
        self.margin = margin
        self.squared = squared
        self.normalize = normalize

    def forward(self, h_a: torch.Tensor, h_p: torch.Tensor, h_n: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            h_a, h_p, h_n = (nn.functional.normalize(h, dim=1) for h in (h_a, h_p, h_n))
        d_ap = _distance(h_a, h_p, self.squared)
        d_an = _distance(h_a, h_n, self.squared)
        return torch.relu(d_ap - d_an + self.margin).mean()


def quantization_error(h: torch.Tensor) -> torch.Tensor:
    """Q(h) = mean_k (log cosh |h_k - b_k|)^2: (M, K) -> (M,)."""
    return torch.log(torch.cosh(h - _binary(h))).pow(2).mean(dim=1)


class IsometricQuantizationLoss(nn.Module):
    """L_iso = mean_M sum_{(i,j) in {(a,p), (a,n), (p,n)}}
    [ Q(h_i) + Q(h_j) + mu * (||h_i - h_j|| - ||b_i - b_j||)^2 / K ].

    The pairwise term asks Euclidean distances between outputs to match the (square roots of
    the) Hamming distances between their codes, so ranking by either agrees.
    """

    def __init__(self, mu: float = 1.0) -> None:
        super().__init__()
        self.mu = mu

    def forward(self, h_a: torch.Tensor, h_p: torch.Tensor, h_n: torch.Tensor) -> torch.Tensor:
        bits = h_a.shape[1]
        q = {name: quantization_error(h) for name, h in (("a", h_a), ("p", h_p), ("n", h_n))}
        outputs = {"a": h_a, "p": h_p, "n": h_n}
        total = h_a.new_zeros(h_a.shape[0])
        for i, j in (("a", "p"), ("a", "n"), ("p", "n")):
            h_i, h_j = outputs[i], outputs[j]
            d_h = _distance(h_i, h_j, squared=False)
            d_b = torch.sqrt((_binary(h_i) - _binary(h_j)).pow(2).sum(dim=1))
            total = total + q[i] + q[j] + self.mu * (d_h - d_b).pow(2) / bits
        return total.mean()


class BinaryBalanceLoss(nn.Module):
    """L_bal = lambda1 * L_push + lambda2 * L_equal over all 3M outputs of the batch.

    L_push  = mean_images [0.25 - (1/K) ||h - 0.5||^2]            (0 when every h_k in {0, 1})
    L_equal = (1/K) sum_k (mean_images h_k - 0.5)^2                 (``equal='bit'``, the choice)
            = mean_images (mean_k h_k - 0.5)^2                       (``equal='image'``, the option)
    """

    def __init__(self, lambda1: float = 1.0, lambda2: float = 1.0, equal: str = "bit") -> None:
        super().__init__()
        if equal not in EQUAL_MODES:
            raise ValueError(f"equal must be one of {EQUAL_MODES}, got {equal!r}")
        self.lambda1 = lambda1
        self.lambda2 = lambda2
        self.equal = equal

    def push(self, h: torch.Tensor) -> torch.Tensor:
        return (0.25 - (h - 0.5).pow(2).mean(dim=1)).mean()

    def equal_probability(self, h: torch.Tensor) -> torch.Tensor:
        if self.equal == "bit":
            return (h.mean(dim=0) - 0.5).pow(2).mean()
        return (h.mean(dim=1) - 0.5).pow(2).mean()

    def forward(self, h_a: torch.Tensor, h_p: torch.Tensor, h_n: torch.Tensor) -> torch.Tensor:
        h = torch.cat([h_a, h_p, h_n])
        return self.lambda1 * self.push(h) + self.lambda2 * self.equal_probability(h)


class DAHashLoss(nn.Module):
    """L = w_tri * L_tri + alpha * L_iso + beta * L_bal; ``terms`` holds each part for logging.

    w_tri is 1 in the method; 0 is the "triplet loss removed" ablation. A weight of 0 removes
    its term entirely, saving its compute.
    """

    def __init__(
        self,
        margin: float,
        alpha: float,
        beta: float,
        mu: float,
        lambda1: float,
        lambda2: float,
        squared: bool = True,
        equal: str = "bit",
        normalize: bool = False,
        triplet_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.triplet_weight = triplet_weight
        self.alpha = alpha
        self.beta = beta
        self.triplet = TripletLoss(margin, squared, normalize)
        self.isometric = IsometricQuantizationLoss(mu)
        self.balance = BinaryBalanceLoss(lambda1, lambda2, equal)

    def forward(
        self, h_a: torch.Tensor, h_p: torch.Tensor, h_n: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total = h_a.new_zeros(())
        terms = {}
        if self.triplet_weight:
            tri = self.triplet(h_a, h_p, h_n)
            total = total + self.triplet_weight * tri
            terms["tri"] = float(tri.detach())
        if self.alpha:
            iso = self.isometric(h_a, h_p, h_n)
            total = total + self.alpha * iso
            terms["iso"] = float(iso.detach())
        if self.beta:
            bal = self.balance(h_a, h_p, h_n)
            total = total + self.beta * bal
            terms["bal"] = float(bal.detach())
        terms["total"] = float(total.detach())
        return total, terms


class CentreLoss(nn.Module):
    """L_centre = mean_i mean_k BCE(logits_ik, t_{y_i, k}) (METHOD.md section 6).

    ``targets`` (n_classes, K) holds each class's target code in {0, 1}; logits (N, K) are
    the hash layer's pre-Sigmoid outputs and labels (N,) index the rows of ``targets``.
    """

    def __init__(self, targets: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("targets", torch.as_tensor(targets, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, self.targets[labels])
