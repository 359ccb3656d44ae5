"""Training the hash network on cached backbone features.

``TrainConfig`` holds every knob of METHOD.md (network, loss weights, sampler, optimiser);
the tuned values ship in ``trainer/defaults/dahash.json`` and ``trainer/defaults/milan.json``
(MiLAN's published settings). ``train_hash_net`` is a plain loop over sampled batches.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources

import numpy as np
import torch
from tqdm import tqdm

from dahash_index.codes import check_bits
from dahash_index.network import HashNet, NetConfig
from trainer.losses import DAHashLoss
from trainer.sampling import (
    ClassBalancedSampler,
    RandomTripletSampler,
    batch_all_triplets,
    semi_hard_triplets,
)

SAMPLERS = ("random", "batch-all", "semi-hard")


@dataclass(frozen=True)
class TrainConfig:
    # network
    bits: int = 64
    head: str = "dahash"
    attention: str = "dual"
    reduction: int = 16
    dropout: float = 0.0
    # loss: L = w_tri * L_tri + alpha * L_iso + beta * (lambda1 * L_push + lambda2 * L_equal)
    margin_fraction: float = 0.25  # triplet margin m = margin_fraction * K (squared distances)
    margin: float | None = None  # an absolute margin overrides margin_fraction
    squared: bool = True
    normalize: bool = False
    triplet_weight: float = 1.0
    alpha: float = 1.0
    mu: float = 1.0
    beta: float = 1.0
    lambda1: float = 1.0
    lambda2: float = 1.0
    equal: str = "bit"
    # sampling
    sampler: str = "random"
    triplets: int = 30  # M, for the random sampler
    classes_per_batch: int = 8  # P, for online mining
    per_class: int = 8  # S, for online mining
    # optimisation (Adam)
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    steps: int = 2000

    def net_config(self) -> NetConfig:
        return NetConfig(self.bits, self.head, self.attention, self.reduction, self.dropout)

    def margin_value(self) -> float:
        return self.margin if self.margin is not None else self.margin_fraction * self.bits

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
        return cls(**values)

    def validate(self) -> TrainConfig:
        check_bits(self.bits)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        return self


def preset(name: str = "dahash", **overrides) -> TrainConfig:
    """A shipped, versioned configuration ('dahash' or 'milan') with optional overrides."""
    text = resources.files("trainer").joinpath("defaults", f"{name}.json").read_text()
    values = json.loads(text)
    values.pop("_comment", None)
    return TrainConfig.from_dict(values | overrides).validate()


def make_loss(config: TrainConfig) -> DAHashLoss:
    return DAHashLoss(
        margin=config.margin_value(),
        alpha=config.alpha,
        beta=config.beta,
        mu=config.mu,
        lambda1=config.lambda1,
        lambda2=config.lambda2,
        squared=config.squared,
        equal=config.equal,
        normalize=config.normalize,
        triplet_weight=config.triplet_weight,
    )


def train_hash_net(
    features: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    seed: int = 0,
    progress: bool = True,
) -> tuple[HashNet, list[dict[str, float]]]:
    """Train on features (N, C) float32 with labels (N,) int -> (net in eval mode, loss log).

    The log has one dict of loss terms per 100 steps (averaged over those steps).
    """
    config.validate()
    torch.manual_seed(seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.int64)
    net = HashNet(replace(config.net_config(), in_features=x.shape[1]))
    loss_fn = make_loss(config)
    optimiser = torch.optim.Adam(
        net.parameters(),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
        fused=True,  # one kernel for all parameters: on the CPU it halves the step's cost
    )
    if config.sampler == "random":
        sampler = RandomTripletSampler(labels, config.triplets, seed)
    else:
        sampler = ClassBalancedSampler(labels, config.classes_per_batch, config.per_class, seed)

    net.train()
    log: list[dict[str, float]] = []
    window: list[dict[str, float]] = []
    bar = tqdm(range(config.steps), desc=f"train K={config.bits}", disable=not progress)
    start = time.perf_counter()
    for step in bar:
        if config.sampler == "random":
            a, p, n = (torch.from_numpy(i) for i in sampler.sample())
            h = net(x[torch.cat([a, p, n])])
            h_a, h_p, h_n = h.split(len(a))
        else:
            batch = torch.from_numpy(sampler.sample())
            h = net(x[batch])
            if config.sampler == "batch-all":
                triplets = batch_all_triplets(y[batch])
            else:
                triplets = semi_hard_triplets(h.detach(), y[batch])
            h_a, h_p, h_n = h[triplets[:, 0]], h[triplets[:, 1]], h[triplets[:, 2]]
        loss, terms = loss_fn(h_a, h_p, h_n)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        window.append(terms)
        if (step + 1) % 100 == 0 or step + 1 == config.steps:
            mean = {k: float(np.mean([t[k] for t in window])) for k in window[0]}
            mean["step"] = step + 1
            mean["seconds"] = time.perf_counter() - start
            log.append(mean)
            window = []
            shown = {k: f"{v:.3f}" for k, v in mean.items() if k not in ("step", "seconds")}
            bar.set_postfix(shown)
    return net.eval(), log


@torch.no_grad()
def hash_outputs(net: HashNet, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Hash-layer outputs h (N, K) float32 for features (N, C) float32, in eval mode."""
    net.eval()
    x = torch.as_tensor(features, dtype=torch.float32)
    return torch.cat([net(chunk) for chunk in x.split(batch_size)]).numpy()
