"""Pictures of samples: a PNG grid for images, a scatter against real data for 2-D vectors."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffusion_core.data.atomic import atomic_path  # noqa: E402


def image_grid(x: np.ndarray, columns: int = 16) -> np.ndarray:
    """N x C x H x W in [-1, 1] -> one H' x W' x C array in [0, 1], one-pixel gaps."""
    n, c, h, w = x.shape
    rows = int(np.ceil(n / columns))
    grid = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1, c))
    for i, img in enumerate(x):
        r, k = divmod(i, columns)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + k * (w + 1): 1 + k * (w + 1) + w] = (
            np.transpose(img, (1, 2, 0)) + 1) / 2
    return grid.clip(0, 1)


def save_picture(samples: np.ndarray, real: np.ndarray, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 6))
    if samples.ndim == 4:
        grid = image_grid(samples[:256])
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    else:
        ax.scatter(real[:, 0], real[:, 1], s=1, alpha=0.4, label="held-out data")
        ax.scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.4, label="samples")
        ax.legend(loc="upper right", markerscale=8)
        ax.set_aspect("equal")
    ax.set_title(title)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """A figure as a PNG, written atomically like every stage output, then closed."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
