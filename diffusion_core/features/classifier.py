"""A small CNN classifier whose penultimate layer is the offline feature space for FD.

The Fréchet distance of DESIGN.md's "FD" is computed in the features of this network,
trained on the real training split (the offline stand-in for Inception-v3 in FID,
Heusel et al. 2017). Saved as ``config.json`` plus a ``model.pt`` state dict, never as
pickled code; ``classifier_hash`` identifies the exact weights behind a figure.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from diffusion_core.data.digest import file_sha256

__all__ = [
    "DigitClassifier",
    "build_trunk",
    "train_classifier",
    "accuracy",
    "predict",
    "predict_labels",
    "extract_features",
    "save_classifier",
    "load_classifier",
    "classifier_hash",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"
WIDTH = 32  # channels of the first conv block; doubled after each pooling (at most 4×)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3×3 convolutions with ReLU (VGG-style block, Simonyan & Zisserman 2015)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(),
    )


def build_trunk(in_channels: int, image_size: int, feature_dim: int, width: int = WIDTH):
    """(body, head): conv blocks pooling 2× until ≤ 4×4 pixels, then a ReLU feature layer
    ``feature_dim`` wide. Shared by every feature network, so their FDs use alike features."""
    blocks, channels, size, c_out = [], in_channels, image_size, width
    while True:
        blocks.append(_conv_block(channels, c_out))
        channels = c_out
        if size <= 4:
            break
        blocks.append(nn.MaxPool2d(2))
        size, c_out = size // 2, min(2 * c_out, 4 * width)
    head = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, feature_dim), nn.ReLU())
    return nn.Sequential(*blocks), head


class DigitClassifier(nn.Module):
    """VGG-style CNN: conv blocks with 2× pooling down to ≤ 4×4, then an MLP head.

    ``features(x)`` returns the penultimate activations (``feature_dim`` wide) used for the
    Fréchet distance; ``forward(x)`` returns class logits. Inputs: float NCHW in [-1, 1].
    """

    def __init__(
        self, in_channels: int, image_size: int, n_classes: int, feature_dim: int = 64, width: int = WIDTH
    ):
        """Build conv blocks (pooling 2× until ≤ 4×4 pixels), a feature layer and logits."""
        super().__init__()
        for name, value in (("in_channels", in_channels), ("image_size", image_size),
                            ("n_classes", n_classes), ("feature_dim", feature_dim), ("width", width)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.in_channels, self.image_size = int(in_channels), int(image_size)
        self.n_classes, self.feature_dim, self.width = int(n_classes), int(feature_dim), int(width)
        self.body, self.head = build_trunk(self.in_channels, self.image_size, self.feature_dim, self.width)
        self.dropout = nn.Dropout(0.2)
        self.out = nn.Linear(self.feature_dim, self.n_classes)

    def config(self) -> dict:
        """Constructor arguments as a JSON-able dict (``DigitClassifier(**config)``)."""
        return {
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "n_classes": self.n_classes,
            "feature_dim": self.feature_dim,
            "width": self.width,
        }

    def _check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is NCHW with this model's channels and size."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            shape = ", ".join(map(str, expected))
            raise ValueError(f"x must have shape (N, {shape}), got {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations, shape (N, feature_dim)."""
        self._check_input(x)
        return self.head(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (N, n_classes)."""
        return self.out(self.dropout(self.features(x)))


# --------------------------------------------------------------------------- inputs


def as_images(x, name: str = "x") -> torch.Tensor:
    """Return ``x`` as a float32 NCHW tensor (numpy or torch in), validating shape/values."""
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).float()
    if t.ndim != 4 or t.shape[2] != t.shape[3]:
        raise ValueError(f"{name} must be square images shaped (N, C, H, W), got {tuple(t.shape)}")
    if t.shape[0] < 1:
        raise ValueError(f"{name} is empty")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _as_labels(y, n: int, name: str = "y") -> torch.Tensor:
    """Return ``y`` as an int64 vector of length ``n`` of non-negative class indices."""
    t = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(
            f"{name} must be a vector of {n} labels (one per image), got shape {tuple(t.shape)}"
        )
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise ValueError(f"{name} must hold integer class indices")
    t = t.long()
    if t.min() < 0:
        raise ValueError(f"{name} must hold non-negative class indices")
    return t


def _random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels, padding with background (−1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    rows = (offsets[:, 0, None] + torch.arange(h))[:, None, :, None]  # (N, 1, H, 1)
    cols = (offsets[:, 1, None] + torch.arange(w))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n)[:, None, None, None]
    chans = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chans, rows, cols]


# --------------------------------------------------------------------------- training


@contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's intra-op thread count (``None`` leaves it alone)."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fit(model, x, y, epochs, batch_size, lr, seed, augment) -> None:
    """Adam + cosine learning-rate decay on cross-entropy (Loshchilov & Hutter 2017)."""
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-x.shape[0] // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    model.train()
    with torch.random.fork_rng(devices=[]):  # dropout draws from the (forked) global RNG
        torch.manual_seed(seed + 1)
        for _ in range(epochs):
            for idx in torch.randperm(x.shape[0], generator=gen).split(batch_size):
                xb = _random_shift(x[idx], gen) if augment else x[idx]
                loss = F.cross_entropy(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()


def train_classifier(
    x_train, y_train, epochs: int = 30, batch_size: int = 128, lr: float = 3e-3,
    seed: int = 0, augment: bool = True, feature_dim: int = 64, width: int = WIDTH,
    n_classes: int | None = None, num_threads: int | None = 1,
) -> DigitClassifier:
    """Train a ``DigitClassifier`` on CPU with Adam, cosine decay and random 1-pixel shifts.

    Deterministic given ``seed``: initialisation, shuffling, shifts and dropout draw from
    seeded generators and the global torch RNG is left untouched. ``num_threads=1`` (the
    default) fixes the reduction order, so weights do not depend on the machine's core
    count, and avoids the thread oversubscription that makes tiny convolutions slow on a
    busy CPU; pass ``None`` to use torch's current setting (larger images).
    """
    x = as_images(x_train, "x_train")
    y = _as_labels(y_train, x.shape[0], "y_train")
    n_classes = int(y.max()) + 1 if n_classes is None else int(n_classes)
    if int(y.max()) >= n_classes:
        raise ValueError(f"y_train has label {int(y.max())} >= n_classes={n_classes}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier(x.shape[1], x.shape[2], n_classes, feature_dim, width)
    with torch_threads(num_threads):
        _fit(model, x, y, int(epochs), int(batch_size), float(lr), seed, augment)
    return model.eval()


# --------------------------------------------------------------------------- inference


@torch.no_grad()
def _batched(model: DigitClassifier, x, fn, batch_size: int) -> torch.Tensor:
    """Apply ``fn(model, batch)`` over ``x`` in eval mode, restoring the model's mode."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x = as_images(x)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        outs = [fn(model, xb.to(device)).cpu() for xb in x.split(int(batch_size))]
    finally:
        model.train(was_training)
    return torch.cat(outs)


def predict_labels(model: DigitClassifier, x, batch_size: int = 512) -> np.ndarray:
    """Arg-max class predictions as an int64 array (input to ``metrics.class_coverage``)."""
    logits = _batched(model, x, lambda m, xb: m(xb), batch_size)
    return logits.argmax(dim=1).numpy().astype(np.int64)


predict = predict_labels  # short name used by flows.distributed.shard_features


def accuracy(model: DigitClassifier, x, y, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on images ``x`` with labels ``y``."""
    pred = predict_labels(model, x, batch_size)
    labels = _as_labels(y, pred.shape[0]).numpy()
    return float(np.mean(pred == labels))


def extract_features(model: DigitClassifier, x, batch_size: int = 512) -> np.ndarray:
    """Penultimate-layer features as a float64 (N, feature_dim) array (eval mode, no grad)."""
    feats = _batched(model, x, lambda m, xb: m.features(xb), batch_size)
    return feats.double().numpy()


# --------------------------------------------------------------------------- persistence


def save_classifier(model: DigitClassifier, path_dir) -> Path:
    """Write ``config.json`` (constructor args) and ``model.pt`` (state dict) to ``path_dir``."""
    if not isinstance(model, DigitClassifier):
        raise ValueError(f"model must be a DigitClassifier, got {type(model).__name__}")
    path = Path(path_dir)
    path.mkdir(parents=True, exist_ok=True)
    config = {"class": "DigitClassifier", **model.config()}
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, path / WEIGHTS_FILE)
    return path


def load_classifier(path_dir) -> DigitClassifier:
    """Rebuild a classifier from ``config.json`` and load ``model.pt`` (weights_only=True)."""
    path = Path(path_dir)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise ValueError(f"path_dir {str(path)!r} has no {name}")
    config = json.loads((path / CONFIG_FILE).read_text())
    if config.pop("class", "DigitClassifier") != "DigitClassifier":
        raise ValueError(f"path_dir {str(path)!r} does not hold a DigitClassifier")
    model = DigitClassifier(**config)
    state = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def classifier_hash(path_dir) -> str:
    """SHA-256 hex digest of the saved ``model.pt`` (identifies the feature extractor)."""
    weights = Path(path_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"path_dir {str(path_dir)!r} has no {WEIGHTS_FILE}")
    return file_sha256(weights)
