"""The attention-hash network of METHOD.md: channel attention on pooled backbone features,
then a hash head with a Sigmoid output h in [0, 1]^K.

Variants (one constructor each): ``dahash_net`` (dual channel attention fusion and its
ablations) and ``milan_net`` (the MiLAN baseline head). Both are rebuilt from a plain
``NetConfig`` stored in every checkpoint, so a checkpoint needs no code but this file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from dahash_index.errors import check_bits
from dahash_index.registry import Registry

# w = Sigmoid(g_A + g_B) is METHOD.md's choice; 'dual-literal' is the patent legend's literal
# reading w = Sigmoid(Sigmoid(g_A) + Sigmoid(g_B)); 'single' and 'none' are the ablations.
ATTENTION_MODES = ("dual", "dual-literal", "single", "none")
# head name -> make(config) -> nn.Sequential ending in Sigmoid
HEADS: Registry[Callable[[NetConfig], nn.Sequential]] = Registry("head")


def _squeeze_excite(channels: int, reduction: int) -> nn.Sequential:
    """g(x) = W2 . ReLU(W1 . x), the logits of one squeeze-excitation branch (no biases, as in
    METHOD.md)."""
    hidden = max(1, channels // reduction)
    return nn.Sequential(
        nn.Linear(channels, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, channels, bias=False)
    )


class ChannelAttention(nn.Module):
    """Channel re-weighting x~ = x * w of pooled features: (N, C) -> (N, C)."""

    def __init__(self, channels: int = 2048, reduction: int = 16, mode: str = "dual") -> None:
        super().__init__()
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {mode!r}")
        self.mode = mode
        self.branch_a = _squeeze_excite(channels, reduction) if mode != "none" else None
        self.branch_b = _squeeze_excite(channels, reduction) if mode.startswith("dual") else None

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The channel weights w: (N, C) in (0, 1); all ones for mode 'none'."""
        if self.mode == "none":
            return torch.ones_like(x)
        if self.mode == "single":
            return torch.sigmoid(self.branch_a(x))
        if self.mode == "dual":
            return torch.sigmoid(self.branch_a(x) + self.branch_b(x))
        return torch.sigmoid(torch.sigmoid(self.branch_a(x)) + torch.sigmoid(self.branch_b(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


def dahash_head(
    in_features: int, bits: int, dropout: float = 0.0, input_dropout: float | None = None
) -> nn.Sequential:
    """FC(C->2048) ReLU -> FC(2048->512) ReLU -> FC(512->K) Sigmoid.

    Dropout on the head's input (``input_dropout``, default ``dropout``) and on the 2048-unit
    hidden layer (``dropout``) is an option for small training sets; 0 is the plain head of
    METHOD.md. Dropout modules hold no weights, so checkpoints do not depend on them.
    """
    return nn.Sequential(
        nn.Dropout(dropout if input_dropout is None else input_dropout),
        nn.Linear(in_features, 2048),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(2048, 512),
        nn.ReLU(),
        nn.Linear(512, bits),
        nn.Sigmoid(),
    )


def milan_head(in_features: int, bits: int) -> nn.Sequential:
    """MiLAN's head: FC(C->1024) LeakyReLU(0.2) -> FC(1024->512) LeakyReLU(0.2) -> FC(512->K)
    Sigmoid."""
    return nn.Sequential(
        nn.Linear(in_features, 1024),
        nn.LeakyReLU(0.2),
        nn.Linear(1024, 512),
        nn.LeakyReLU(0.2),
        nn.Linear(512, bits),
        nn.Sigmoid(),
    )


@dataclass(frozen=True)
class NetConfig:
    """What it takes to rebuild a hash network (stored in checkpoints as a dict)."""

    bits: int = 64
    head: str = "dahash"
    attention: str = "dual"
    reduction: int = 16
    dropout: float = 0.0
    in_features: int = 2048
    input_dropout: float | None = None  # None: the same as ``dropout``
    # x <- (x - mean) / std before the attention, with the train part's statistics held in
    # the network's buffers (so they travel in the checkpoint and apply wherever codes are
    # computed). False for checkpoints from before this option.
    standardize: bool = False
    # The encoder codes a scene from the mean of the features of its 8 orientations
    # (dahash_index.model.orientations): 8 backbone passes per scene.
    average_orientations: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


HEADS.add("dahash", lambda c: dahash_head(c.in_features, c.bits, c.dropout, c.input_dropout),
          "the method's three-layer head")
HEADS.add("milan", lambda c: milan_head(c.in_features, c.bits), "the MiLAN baseline's head")
HEADS.add("linear", lambda c: nn.Sequential(nn.Linear(c.in_features, c.bits), nn.Sigmoid()),
          "FC(C->K) Sigmoid: what ``adapt`` fits on an archive without labels (ITQ)")


class HashNet(nn.Module):
    """Pooled backbone features (N, C) float32 -> hash-layer outputs h (N, K) in [0, 1].

    ``logits`` is the same map without the final Sigmoid (what a binary cross-entropy wants).
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        check_bits(config.bits)
        make_head = HEADS.get(config.head)
        self.config = config
        if config.standardize:
            self.register_buffer("feature_mean", torch.zeros(config.in_features))
            self.register_buffer("feature_std", torch.ones(config.in_features))
        self.attention = ChannelAttention(config.in_features, config.reduction, config.attention)
        self.head = make_head(config)

    @torch.no_grad()
    def set_standardization(self, features: torch.Tensor) -> None:
        """Store the per-channel mean and std of ``features`` (N, C); the std is floored so
        that a constant channel maps to 0 instead of dividing by zero."""
        if not self.config.standardize:
            raise ValueError("this network was built with standardize=False")
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_std.copy_(features.std(dim=0).clamp_min(1e-6))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N, K) pre-Sigmoid outputs."""
        if self.config.standardize:
            features = (features - self.feature_mean) / self.feature_std
        return self.head[:-1](self.attention(features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(features))


def dahash_net(
    bits: int = 64, attention: str = "dual", reduction: int = 16, dropout: float = 0.0
) -> HashNet:
    """The method's network: channel attention (``attention`` mode) + the three-layer head."""
    return HashNet(NetConfig(bits, "dahash", attention, reduction, dropout))


def milan_net(bits: int = 64) -> HashNet:
    """The MiLAN re-implementation's network: no attention, MiLAN's head."""
    return HashNet(NetConfig(bits, "milan", "none"))
