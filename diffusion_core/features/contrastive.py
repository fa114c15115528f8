"""A label-free feature network for FD: the classifier's CNN trunk trained contrastively.

SimCLR (Chen et al. 2020): two random views of each image pass through the trunk f and a
small projection head g; the NT-Xent loss pulls the two views' projections together and
pushes them from every other image's in the batch. FD uses f's output (the representation
before g, which SimCLR found the better feature), read out as its direction and its log-norm
(below), or raw. No labels and no download: any folder or npz of images.

The readout. NT-Xent sees f only through g and a final normalisation, so nothing holds the
norm of f: it drifts with training and the input's contrast, heavy-tailed (at 16×16, norms
from a few to thousands across images), and in raw features those large norms swamp FD. The
``readout="direction_log_norm"`` features are ``[f/‖f‖, log ‖f‖]`` (feature_dim + 1 wide):
the direction, where the contrastive geometry lives, plus the norm on a log scale, so an
image's overall scale still counts without its tail dominating. It separates 16×16 toy
families that raw f does not, but it is not yet the pipeline's default (``readout="raw"``,
f itself): at 8×8 with 100 evaluated images it widened the evaluate stage's FD/floor interval
for noise so far that it overlapped real images' (docs/comparison.md). Networks saved before
the readout existed (no ``readout`` in their config) are raw.

The views teach the features what to ignore, and an invariance is a blind spot of the FD:
mild crops and shifts (a generator's sub-pixel placement should not count), small
brightness/contrast changes applied to all channels alike (hue kept, so colour errors still
show), faint Gaussian noise; no flips (mirror symmetry is not known for an arbitrary data
set, a mirrored digit is another glyph) and no colour jitter.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from diffusion_core.features.classifier import (CONFIG_FILE, WEIGHTS_FILE, WIDTH, DigitClassifier,
                                                as_images, torch_threads, build_trunk,
                                                load_classifier)

__all__ = ["ContrastiveEncoder", "augment", "nt_xent", "train_contrastive", "view_match_accuracy",
           "save_contrastive", "load_contrastive", "load_feature_network"]

MIN_SCALE = 0.6  # smallest crop side, as a fraction of the image's (area ≥ 36%)
JITTER = 0.2  # brightness shift and relative contrast change, at most, in [-1, 1] units
NOISE_STD = 0.04  # about five 8-bit levels
READOUTS = ("raw", "direction_log_norm")  # what ``features`` returns: f, or [f/‖f‖, log ‖f‖]
MIN_NORM = 1e-6  # floor of ‖f‖ in the readout (an all-zero ReLU output), so log ‖f‖ is finite


class ContrastiveEncoder(nn.Module):
    """The classifier's trunk (``build_trunk``) plus SimCLR's two-layer projection head.

    ``trunk(x)``: f, (N, feature_dim); ``features(x)``: the representation FD uses, by
    ``readout``: ``[f/‖f‖, log ‖f‖]`` (N, feature_dim + 1) or, for ``raw``, f itself;
    ``forward(x)``: unit-norm projections g(f) for the loss. Inputs: float NCHW in [-1, 1].
    The readout is in the config and, for ``direction_log_norm``, also a buffer of the state
    dict, so ``model.pt`` (whose sha256 names the extractor) differs with it.
    """

    def __init__(self, in_channels: int, image_size: int, feature_dim: int = 64, width: int = WIDTH,
                 projection_dim: int = 32, readout: str = "raw"):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("image_size", image_size),
                            ("feature_dim", feature_dim), ("width", width), ("projection_dim", projection_dim)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.in_channels, self.image_size = int(in_channels), int(image_size)
        self.feature_dim, self.width, self.projection_dim = int(feature_dim), int(width), int(projection_dim)
        self.readout = readout
        self.body, self.head = build_trunk(self.in_channels, self.image_size, self.feature_dim, self.width)
        self.projection = nn.Sequential(nn.Linear(self.feature_dim, self.feature_dim), nn.ReLU(),
                                        nn.Linear(self.feature_dim, self.projection_dim))
        if readout == "direction_log_norm":
            self.register_buffer("direction_log_norm_readout", torch.ones(()))

    def config(self) -> dict:
        """Constructor arguments as a JSON-able dict (``ContrastiveEncoder(**config)``)."""
        return {"in_channels": self.in_channels, "image_size": self.image_size, "feature_dim": self.feature_dim,
                "width": self.width, "projection_dim": self.projection_dim, "readout": self.readout}

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """f(x), the trunk's ReLU output, shape (N, feature_dim); the projection head's input."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        return self.head(self.body(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The representation FD is computed on: ``[f/‖f‖, log ‖f‖]`` (feature_dim + 1 wide),
        or f for ``readout="raw"``. Every caller (floor, samples, NFE sweep) goes through here."""
        f = self.trunk(x)
        if self.readout == "raw":
            return f
        norm = f.norm(dim=1, keepdim=True).clamp_min(MIN_NORM)
        return torch.cat([f / norm, norm.log()], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm projections g(f(x)), shape (N, projection_dim)."""
        return F.normalize(self.projection(self.trunk(x)), dim=1)


# --------------------------------------------------------------------------- views and loss


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _random_resized_crop(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A square crop of side s ∈ [MIN_SCALE, 1] at a random place inside the image, resized
    back bilinearly: an affine sampling grid x_src = s·x_out + t with |t| ≤ 1 − s."""
    n = x.shape[0]
    scale = _uniform(n, MIN_SCALE, 1.0, gen)
    shift = (2 * torch.rand(n, 2, generator=gen) - 1) * (1 - scale)[:, None]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random view per image: crop, then x' = c·(x − m) + m + b with m the image's mean
    (the same c, b for every channel), then Gaussian noise; clipped back to [-1, 1]."""
    n = x.shape[0]
    view = _random_resized_crop(x, gen)
    contrast = _uniform(n, 1 - JITTER, 1 + JITTER, gen)[:, None, None, None]
    brightness = _uniform(n, -JITTER, JITTER, gen)[:, None, None, None]
    mean = view.mean(dim=(1, 2, 3), keepdim=True)
    view = contrast * (view - mean) + mean + brightness
    view = view + NOISE_STD * torch.randn(view.shape, generator=gen)
    return view.clamp(-1.0, 1.0)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR, eq. 1): for each of the 2N views, cross-entropy of picking its other
    view among the 2N − 1 others by cosine similarity over ``temperature``."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    logits = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, positives)


# --------------------------------------------------------------------------- training


def _fit(model, x, epochs, batch_size, lr, temperature, seed) -> None:
    """Adam with cosine decay on NT-Xent; batches of one image are skipped (no negatives)."""
    gen = torch.Generator().manual_seed(seed)
    batches = [b for b in torch.arange(x.shape[0]).split(batch_size) if len(b) > 1]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(batches))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for idx in (order[b] for b in batches):
            loss = nt_xent(model(augment(x[idx], gen)), model(augment(x[idx], gen)), temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def train_contrastive(x_train, epochs: int = 150, batch_size: int = 128, lr: float = 3e-3,
                      temperature: float = 0.5, seed: int = 0, feature_dim: int = 64, width: int = WIDTH,
                      num_threads: int | None = 1, readout: str = "raw") -> ContrastiveEncoder:
    """Train a ``ContrastiveEncoder`` on unlabelled images (CPU). Deterministic given ``seed``
    (initialisation, order and views from seeded generators; the global RNG untouched);
    ``num_threads=1`` fixes the reduction order, as for the classifier. ``readout`` only
    changes what ``features`` returns, not the training (same seed, same trunk weights)."""
    x = as_images(x_train, "x_train")
    if x.shape[0] < 2:
        raise ValueError(f"x_train needs at least 2 images (each one's negatives), got {x.shape[0]}")
    if int(epochs) < 1 or int(batch_size) < 2:
        raise ValueError(f"epochs must be >= 1 and batch_size >= 2, got {epochs} and {batch_size}")
    if not (lr > 0 and temperature > 0):
        raise ValueError(f"lr and temperature must be positive, got {lr} and {temperature}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ContrastiveEncoder(x.shape[1], x.shape[2], feature_dim, width, readout=readout)
    with torch_threads(num_threads):
        _fit(model, x, int(epochs), int(batch_size), float(lr), float(temperature), seed)
    return model.eval()


@torch.no_grad()
def view_match_accuracy(model: ContrastiveEncoder, x, seed: int = 0) -> float:
    """Held-out check of the training task: the fraction of 2N views whose most similar other
    view (cosine, projections) is the other view of the same image; chance is 1/(2N − 1)."""
    x = as_images(x)
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        z = torch.cat([model(augment(x, gen)), model(augment(x, gen))])
    finally:
        model.train(was_training)
    similarity = (z @ z.T).fill_diagonal_(float("-inf"))
    n = x.shape[0]
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return float((similarity.argmax(dim=1) == positives).double().mean())


# --------------------------------------------------------------------------- persistence


def save_contrastive(model: ContrastiveEncoder, path_dir) -> Path:
    """Write ``config.json`` (constructor args) and ``model.pt`` (state dict), as the classifier."""
    if not isinstance(model, ContrastiveEncoder):
        raise ValueError(f"model must be a ContrastiveEncoder, got {type(model).__name__}")
    path = Path(path_dir)
    path.mkdir(parents=True, exist_ok=True)
    config = {"class": "ContrastiveEncoder", **model.config()}
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path / WEIGHTS_FILE)
    return path


def _config(path: Path) -> dict:
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise ValueError(f"path_dir {str(path)!r} has no {name}")
    return json.loads((path / CONFIG_FILE).read_text())


def load_contrastive(path_dir) -> ContrastiveEncoder:
    """Rebuild from ``config.json`` and load ``model.pt`` with weights_only (no pickled code);
    a config without ``readout`` (saved before it existed) gets ``raw``, as it was measured."""
    path = Path(path_dir)
    config = _config(path)
    if config.pop("class", None) != "ContrastiveEncoder":
        raise ValueError(f"path_dir {str(path)!r} does not hold a ContrastiveEncoder")
    config.setdefault("readout", "raw")  # saved before the readout existed: the trunk's raw output
    model = ContrastiveEncoder(**config)
    model.load_state_dict(torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return model.eval()


def load_feature_network(path_dir) -> DigitClassifier | ContrastiveEncoder:
    """Whichever feature network a folder holds, by its config's class."""
    kind = _config(Path(path_dir)).get("class", "DigitClassifier")
    return load_contrastive(path_dir) if kind == "ContrastiveEncoder" else load_classifier(path_dir)

