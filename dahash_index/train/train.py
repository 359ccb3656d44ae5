"""Training the hash network on cached backbone features.

``TrainConfig`` holds every knob of METHOD.md (network, loss weights, sampler, optimiser, and
the options of its section 6: centre term, standardisation, orientation augmentation); the
tuned values ship in ``trainer/defaults/dahash.json`` and ``trainer/defaults/milan.json``
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

from dahash_index.errors import check_bits
from dahash_index.model.codes import hash_codes
from dahash_index.model.encoder import check_device
from dahash_index.model.network import HashNet, NetConfig
from dahash_index.model.orientations import AUGMENTATION_SETS
from dahash_index.train import metrics
from dahash_index.train.centres import centre_codes
from dahash_index.train.data import split_per_class
from dahash_index.train.losses import CentreLoss, DAHashLoss
from dahash_index.train.sampling import (
    ClassBalancedSampler,
    RandomTripletSampler,
    batch_all_triplets,
    semi_hard_triplets,
)

SAMPLERS = ("random", "batch-all", "semi-hard")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    # network
    bits: int = 64
    head: str = "dahash"
    attention: str = "dual"
    reduction: int = 16
    dropout: float = 0.0
    input_dropout: float | None = None  # None: the same as dropout
    standardize: bool = False  # features standardised with the train part's mean and std
    average_orientations: bool = False  # code of a scene from the mean of its 8 orientations
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
    centre_weight: float = 0.0  # gamma of the class-centre term (0: no centre term)
    # sampling
    sampler: str = "random"
    triplets: int = 30  # M, for the random sampler
    classes_per_batch: int = 8  # P, for online mining
    per_class: int = 8  # S, for online mining
    # 2, 4, 8: each training scene drawn in a random one of that many orientations
    # (dahash_index.model.orientations.AUGMENTATION_SETS); 1: as stored
    orientations: int = 1
    # optimisation (Adam)
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0  # decoupled (AdamW)
    schedule: str = "constant"  # learning rate: constant, or cosine decay to 0 over the steps
    steps: int = 2000
    # early stopping: hold out this fraction of each class of the training data, score it
    # every eval_every steps, and keep the weights that scored best (0: train on everything)
    validation_fraction: float = 0.0
    eval_every: int = 100

    def net_config(self) -> NetConfig:
        return NetConfig(self.bits, self.head, self.attention, self.reduction, self.dropout,
                         input_dropout=self.input_dropout, standardize=self.standardize,
                         average_orientations=self.average_orientations)

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
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.orientations not in AUGMENTATION_SETS:
            raise ValueError(f"orientations must be one of {sorted(AUGMENTATION_SETS)}, "
                             f"got {self.orientations!r}")
        _check_number("steps", self.steps, 1, integer=True)
        _check_number("eval_every", self.eval_every, 1, integer=True)
        _check_number("lr", self.lr, 0.0, open_low=True)
        _check_number("validation_fraction", self.validation_fraction, 0.0, high=0.5)
        _check_number("centre_weight", self.centre_weight, 0.0)
        _check_number("weight_decay", self.weight_decay, 0.0)
        for name in ("dropout", "input_dropout"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), 0.0, high=0.95)
        return self


def _check_number(name: str, value, low: float, high: float | None = None,
                  integer: bool = False, open_low: bool = False) -> None:
    """One-line ValueError unless ``value`` is a number (an int if ``integer``) in range."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, "
                         f"got {value!r}")
    if value < low or (open_low and value == low) or (high is not None and value > high):
        bound = f"> {low}" if open_low else f">= {low}"
        raise ValueError(f"{name} must be {bound}" + (f" and <= {high}" if high else "")
                         + f", got {value!r}")


def list_presets() -> list[str]:
    """Names of the shipped configurations: the files ``trainer/defaults/NAME.json``."""
    folder = resources.files("dahash_index.train").joinpath("defaults")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def preset(name: str = "dahash", **overrides) -> TrainConfig:
    """A shipped, versioned configuration (one of ``list_presets()``) with optional
    overrides."""
    if name not in list_presets():
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(list_presets())}")
    text = resources.files("dahash_index.train").joinpath("defaults", f"{name}.json").read_text()
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


@dataclass
class TrainedNet:
    """What ``train_hash_net`` returns.

    net: in eval mode. log: one dict of loss terms per ``eval_every`` steps (averaged over
    those steps; with early stopping also the validation score ``val``). centre_codes:
    (max label + 1, K) bool target codes of the centre term, or None without it. best_step:
    the step whose weights ``net`` holds.
    """

    net: HashNet
    log: list[dict[str, float]]
    centre_codes: np.ndarray | None
    best_step: int


def _validation_score(net: HashNet, x_fit, y_fit, x_val, y_val) -> float:
    """Tie-aware mAP@all of the validation scenes querying the fit scenes by Hamming rank."""
    from dahash_index.train.ranking import (
        hamming_rank_all,  # FAISS loads only when early stopping is used
    )

    d, ids = hamming_rank_all(hash_codes(hash_outputs(net, x_fit)),
                              hash_codes(hash_outputs(net, x_val)))
    return metrics.mean_average_precision(y_val, y_fit, ids, d, tie_aware=True)


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU (the encoders' default too)."""
    return check_device(None)


def train_hash_net(
    features: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> TrainedNet:
    """Train on features (N, C) float32 with labels (N,) int (class ids, not necessarily
    contiguous). With ``config.orientations`` = O > 1, features are (O, N, C): every scene
    in the orientations ``AUGMENTATION_SETS[O]`` (``dahash_index.model.orientations``), in order.
    Trains on ``device`` (default: the GPU when there is one); the returned net is on the CPU.
    Batches are sampled on the CPU with seeded generators, so the draws do not depend on it.
    """
    config.validate()
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    x = torch.as_tensor(features, dtype=torch.float32, device=device)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] != config.orientations or x.shape[1] != len(labels):
        raise ValueError(f"features of shape {tuple(features.shape)} do not fit "
                         f"{config.orientations} orientation(s) of {len(labels)} scenes")
    labels = np.asarray(labels, dtype=np.int64)
    fit = np.arange(len(labels))
    val = None
    if config.validation_fraction > 0:
        fit, val = split_per_class(labels, seed + 10_000, 1.0 - config.validation_fraction)
    y = torch.as_tensor(labels, dtype=torch.int64, device=device)
    net = HashNet(replace(config.net_config(), in_features=x.shape[2])).to(device)
    if config.standardize:
        net.set_standardization(x[:, torch.from_numpy(fit).to(device)].reshape(-1, x.shape[2]))
    loss_fn = make_loss(config)
    targets = None
    centre_fn = None
    if config.centre_weight:
        targets = centre_codes(int(labels.max()) + 1, config.bits, seed)
        centre_fn = CentreLoss(torch.from_numpy(targets)).to(device)
    optimiser = torch.optim.AdamW(
        net.parameters(),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
        fused=True,  # one kernel for all parameters: on the CPU it halves the step's cost
    )
    schedule = None
    if config.schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, config.steps)
    if config.sampler == "random":
        sampler = RandomTripletSampler(labels[fit], config.triplets, seed)
    else:
        sampler = ClassBalancedSampler(labels[fit], config.classes_per_batch, config.per_class,
                                       seed)
    orientation_rng = torch.Generator().manual_seed(seed)
    fit_t = torch.from_numpy(fit)
    if val is not None:
        x_fit, x_val = (x[0, torch.from_numpy(i).to(device)] for i in (fit, val))

    def batch_features(rows: torch.Tensor) -> torch.Tensor:
        """Features of training rows (on the device), each in a random trained orientation."""
        if x.shape[0] == 1:
            return x[0, rows]
        turn = torch.randint(x.shape[0], (len(rows),), generator=orientation_rng)
        return x[turn.to(device), rows]

    net.train()
    log: list[dict[str, float]] = []
    window: list[dict[str, float]] = []
    best = (-1.0, config.steps, None)  # (validation score, step, weights)
    bar = tqdm(range(config.steps), desc=f"train K={config.bits}", disable=not progress)
    start = time.perf_counter()
    for step in bar:
        if config.sampler == "random":
            a, p, n = (torch.from_numpy(i) for i in sampler.sample())
            rows = fit_t[torch.cat([a, p, n])].to(device)
            logits = net.logits(batch_features(rows))
            h = torch.sigmoid(logits)
            h_a, h_p, h_n = h.split(len(a))
        else:
            rows = fit_t[torch.from_numpy(sampler.sample())].to(device)
            logits = net.logits(batch_features(rows))
            h = torch.sigmoid(logits)
            if config.sampler == "batch-all":
                triplets = batch_all_triplets(y[rows])
            else:
                triplets = semi_hard_triplets(h.detach(), y[rows])
            h_a, h_p, h_n = h[triplets[:, 0]], h[triplets[:, 1]], h[triplets[:, 2]]
        loss, terms = loss_fn(h_a, h_p, h_n)
        if centre_fn is not None:
            centre = centre_fn(logits, y[rows])
            loss = loss + config.centre_weight * centre
            terms["centre"] = float(centre.detach())
            terms["total"] = float(loss.detach())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if schedule is not None:
            schedule.step()
        window.append(terms)
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            mean = {k: float(np.mean([t[k] for t in window])) for k in window[0]}
            mean["step"] = step + 1
            if val is not None:
                score = _validation_score(net, x_fit, labels[fit], x_val, labels[val])
                net.train()
                mean["val"] = score
                if score > best[0]:
                    best = (score, step + 1, {k: v.clone() for k, v in net.state_dict().items()})
            mean["seconds"] = time.perf_counter() - start
            log.append(mean)
            window = []
            shown = {k: f"{v:.3f}" for k, v in mean.items() if k not in ("step", "seconds")}
            bar.set_postfix(shown)
    if best[2] is not None:
        net.load_state_dict(best[2])
    return TrainedNet(net.eval().cpu(), log, targets, best[1])


@torch.no_grad()
def hash_outputs(net: HashNet, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Hash-layer outputs h (N, K) float32 for features (N, C) float32 (array or tensor),
    in eval mode, computed on the net's device."""
    net.eval()
    device = next(net.parameters()).device
    x = torch.as_tensor(features, dtype=torch.float32, device=device)
    return torch.cat([net(chunk) for chunk in x.split(batch_size)]).cpu().numpy()
