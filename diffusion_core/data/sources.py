"""Data sources: toys, scikit-learn digits, image folders and .npz arrays, as float32 arrays.

Images come back N×C×H×W in [-1, 1]; vectors N×D. Labels are int64 or None.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from diffusion_core.data.toys import TOY_NAMES, sample_toy

SOURCE_FORMS = ("toy:<name>", "digits", "folder:<path>", "npz:<path>")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_CHANNEL_COUNTS = (1, 3, 4)
_FLOAT_RANGE_TOLERANCE = 1e-3


def load_source(source: str, n_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a source as (x float32, labels int64 or None); n_samples is used by toys only."""
    if not isinstance(source, str):
        raise ValueError(f"source must be a string, one of {', '.join(SOURCE_FORMS)}; got {source!r}")
    kind, _, arg = source.partition(":")
    if kind == "toy" and arg:
        if arg not in TOY_NAMES:
            raise ValueError(f"unknown toy in source {source!r}; valid toys: {', '.join(TOY_NAMES)}")
        return sample_toy(arg, n_samples, np.random.default_rng(seed)), None
    if source == "digits":
        return _load_digits()
    if kind == "folder" and arg:
        return _load_folder(Path(arg))
    if kind == "npz" and arg:
        return _load_npz(Path(arg))
    raise ValueError(f"unknown data source {source!r}; valid forms: {', '.join(SOURCE_FORMS)}")


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None, :, :]
    return x, digits.target.astype(np.int64)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _folder_listing(folder: Path) -> tuple[list[Path], np.ndarray | None]:
    """Images directly in folder (no labels), else one class per subfolder (labels)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = _image_files(folder)
    if files:
        return files, None
    files, labels = [], []
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    for label, class_dir in enumerate(class_dirs):
        class_files = _image_files(class_dir)
        files += class_files
        labels += [label] * len(class_files)
    if not files:
        raise ValueError(f"no PNG/JPEG images in folder {folder} or its class subfolders")
    return files, np.asarray(labels, dtype=np.int64)


def _read_image(path: Path, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def _folder_mode(files: list[Path]) -> str:
    """'L' when every image is grayscale, else 'RGB'."""
    from PIL import Image, UnidentifiedImageError

    for path in files:
        try:
            with Image.open(path) as image:
                if image.mode not in ("1", "L", "LA", "I", "I;16", "F"):
                    return "RGB"
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {path}: {err}") from err
    return "L"


def _load_folder(folder: Path) -> tuple[np.ndarray, np.ndarray | None]:
    files, labels = _folder_listing(folder)
    mode = _folder_mode(files)
    images = []
    for path in files:
        image = _read_image(path, mode)
        if images and image.shape != images[0].shape:
            raise ValueError(
                f"image {path} has size {image.shape[:2]}, but {files[0]} has {images[0].shape[:2]}; "
                f"all images in folder {folder} must have the same size"
            )
        images.append(image)
    stacked = np.stack(images)
    if stacked.ndim == 3:
        stacked = stacked[..., None]
    return _uint8_to_unit(stacked.transpose(0, 3, 1, 2)), labels


def _uint8_to_unit(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def _to_nchw(x: np.ndarray, path: Path) -> np.ndarray:
    """Channel-first images from N×H×W, N×H×W×C or N×C×H×W."""
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim != 4:
        raise ValueError(f"images in {path} must be N×H×W, N×H×W×C or N×C×H×W; got shape {x.shape}")
    if x.shape[-1] in _CHANNEL_COUNTS and x.shape[1] not in _CHANNEL_COUNTS:
        return x.transpose(0, 3, 1, 2)
    if x.shape[1] in _CHANNEL_COUNTS:
        return x
    raise ValueError(f"cannot tell the channel axis of images in {path}: shape {x.shape}")


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises several types for a bad file
        raise ValueError(f"cannot read npz file {path}: {err}") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is not an .npz archive (np.savez output)")
    with archive:
        if "x" not in archive.files:
            raise ValueError(f"npz file {path} has no key 'x' (keys: {archive.files})")
        return archive["x"], (archive["y"] if "y" in archive.files else None)


def _npz_floats(x: np.ndarray, path: Path) -> np.ndarray:
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"npz file {path}: key 'x' holds non-finite values")
    if x.ndim == 2:
        return x
    x = _to_nchw(x, path)
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.0 - _FLOAT_RANGE_TOLERANCE or hi > 1.0 + _FLOAT_RANGE_TOLERANCE:
        raise ValueError(f"npz file {path}: float images must lie in [-1, 1], found [{lo:.4g}, {hi:.4g}]")
    return np.clip(x, -1.0, 1.0)


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    x, y = _read_npz(path)
    if len(x) == 0:
        raise ValueError(f"npz file {path}: key 'x' is empty")
    if x.dtype == np.uint8:
        x = _uint8_to_unit(_to_nchw(x, path))
    elif np.issubdtype(x.dtype, np.floating):
        x = _npz_floats(x, path)
    else:
        raise ValueError(f"npz file {path}: key 'x' must be uint8 or float, got {x.dtype}")
    if y is not None:
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"npz file {path}: key 'y' must be {len(x)} integer labels, got {y.dtype} {y.shape}")
        y = y.astype(np.int64)
    return x, y


def train_test_split(
    x: np.ndarray, y: np.ndarray | None, test_size: int | float, seed: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Seeded random split into (x_train, y_train, x_test, y_test)."""
    n = len(x)
    if y is not None and len(y) != n:
        raise ValueError(f"x has {n} rows but y has {len(y)}")
    if isinstance(test_size, (float, np.floating)):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size as a fraction must be in (0, 1), got {test_size}")
        n_test = int(round(n * test_size))
    else:
        n_test = int(test_size)
    if not 0 < n_test < n:
        raise ValueError(f"test_size={test_size!r} gives {n_test} test rows out of {n}; need 0 < n_test < {n}")
    order = np.random.default_rng(seed).permutation(n)
    test, train = order[:n_test], order[n_test:]
    pick = (lambda idx: None) if y is None else (lambda idx: y[idx])
    return x[train], pick(train), x[test], pick(test)


def value_range(x: np.ndarray) -> tuple[float, float]:
    """(min, max) over all values."""
    if np.size(x) == 0:
        raise ValueError("value_range of an empty array")
    return float(np.min(x)), float(np.max(x))


def data_kind(x: np.ndarray) -> str:
    """'vector' for N×D arrays, 'image' for N×C×H×W."""
    if np.ndim(x) == 2:
        return "vector"
    if np.ndim(x) == 4:
        return "image"
    raise ValueError(f"data must be N×D (vector) or N×C×H×W (image), got shape {np.shape(x)}")
