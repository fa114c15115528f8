"""Data sources: toys, scikit-learn digits, image folders and .npz arrays, as float32 arrays.

Images come back N×C×H×W in [-1, 1]; vectors N×D. Labels are int64 or None.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from diffusion_core.data import limits
from diffusion_core.data.toys import TOY_NAMES, sample_toy

SOURCE_FORMS = ("toy:<name>", "digits", "folder:<path>", "npz:<path>")
DIGITS_SIZE = 1797  # scikit-learn's bundled digits: 1797 8×8 images, known without loading them
DIGITS_SHAPE = (1, 8, 8)
TOY_SHAPE = (2,)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_CHANNEL_COUNTS = (1, 3, 4)
_FLOAT_RANGE_TOLERANCE = 1e-3


def _forms() -> str:
    return f"valid forms: {', '.join(SOURCE_FORMS)} (toys: {', '.join(TOY_NAMES)})"


def source_kind(source) -> tuple[str, str]:
    """(kind, argument) of a source string: ('toy', name), ('digits', ''), ('folder', path) or
    ('npz', path). Checks the form only, touching no file; a ValueError names the source and
    the valid forms."""
    if not isinstance(source, str):
        raise ValueError(f"a data source is a string; got {source!r}; {_forms()}")
    kind, _, arg = source.partition(":")
    if source == "digits":
        return "digits", ""
    if kind == "toy" and arg:
        if arg not in TOY_NAMES:
            raise ValueError(f"unknown toy {arg!r} in source {source!r}; {_forms()}")
        return kind, arg
    if kind in ("folder", "npz") and arg:
        return kind, arg
    raise ValueError(f"unknown data source {source!r}; {_forms()}")


DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # MLflow experiment/model names, files


def default_dataset_name(source: str) -> str:
    """The data set's name when params do not give one: 'digits', 'toy-checkerboard', the
    folder's name for folder:<path>, the file's stem for npz:<path> ('shapes' for
    npz:/data/shapes.npz), with characters a name may not hold replaced by '-'."""
    kind, arg = source_kind(source)
    if kind in ("digits", "toy"):
        stem = f"{kind}-{arg}" if arg else kind
    else:
        stem = Path(arg.rstrip("/")).stem if kind == "npz" else Path(arg.rstrip("/")).name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-_.")[:64]
    return name or "dataset"


def check_dataset_name(name) -> None:
    """A ValueError naming what is wrong unless `name` can name experiments, registered models
    and files: 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit."""
    if not isinstance(name, str) or not DATASET_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a data set name: use 1-64 letters, digits, '_', '.' "
                         "or '-', starting with a letter or digit")


def check_source(source) -> tuple[str, str]:
    """source_kind, plus that a folder: source names a folder and an npz: source a file
    (FileNotFoundError naming the path). Reads no data: the contents are checked on loading."""
    kind, arg = source_kind(source)
    path = Path(arg)
    if kind == "folder" and not path.is_dir():
        what = "is not a folder" if path.exists() else "not found"
        raise FileNotFoundError(f"image folder {what}: {path} (folder:<path> names a folder of "
                                f"PNG/JPEG images, or of one subfolder of them per class)")
    if kind == "npz" and not path.is_file():
        what = "is not a file" if path.exists() else "not found"
        raise FileNotFoundError(f"npz file {what}: {path} (npz:<path> names an np.savez archive "
                                f"with key 'x')")
    return kind, arg


def load_source(source: str, n_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a source as (x float32, labels int64 or None); n_samples is used by toys only."""
    kind, arg = check_source(source)
    if kind == "toy":
        return sample_toy(arg, n_samples, np.random.default_rng(seed)), None
    if kind == "digits":
        return _load_digits()
    if kind == "folder":
        return _load_folder(Path(arg))
    return _load_npz(Path(arg))


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
        if not class_files:  # its label would name a class with no example
            raise ValueError(f"class folder {class_dir} holds no PNG/JPEG images; every class "
                             f"subfolder of {folder} needs at least one")
        files += class_files
        labels += [label] * len(class_files)
    if not files:
        raise ValueError(f"no PNG/JPEG images in folder {folder} or its class subfolders")
    return files, np.asarray(labels, dtype=np.int64)


def _open_image(path: Path, decode: bool):
    """PIL's image of `path` (its header only, or decoded); a file PIL cannot read is a
    ValueError naming it."""
    from PIL import Image

    image = None
    try:
        image = Image.open(path)
        if decode:
            image.load()
        return image
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        if image is not None:
            image.close()
        raise ValueError(f"cannot read image {path}: {err}") from err


def _read_image(path: Path, mode: str) -> np.ndarray:
    with _open_image(path, decode=True) as image:
        return np.asarray(image.convert(mode))


def _folder_mode(files: list[Path]) -> str:
    """'L' when every image is grayscale, else 'RGB', from the headers alone; each header's
    size is checked against limits.MAX_IMAGE_PIXELS before any image is decoded."""
    grayscale = True
    for path in files:
        with _open_image(path, decode=False) as image:
            limits.check_image_size(image.size, path)
            grayscale = grayscale and image.mode in ("1", "L", "LA", "I", "I;16", "F")
    return "L" if grayscale else "RGB"


def _load_folder(folder: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Every image of the folder, one size, as N×C×H×W in [-1, 1]; labels from class subfolders."""
    files, labels = _folder_listing(folder)
    mode = _folder_mode(files)
    with _open_image(files[0], decode=False) as first:  # every image must have its size
        size = first.size
    limits.check_fits_memory(limits.folder_bytes(len(files), size, 1 if mode == "L" else 3),
                             f"image folder {folder} ({len(files)} images of {size[0]}×{size[1]} pixels)")
    images = []
    for path in files:
        image = _read_image(path, mode)
        if images and image.shape != images[0].shape:
            (h, w), (h0, w0) = image.shape[:2], images[0].shape[:2]
            raise ValueError(f"image {path} is {h}×{w} pixels (height×width), but {files[0]} is "
                             f"{h0}×{w0}: all images in folder {folder} must have the same size")
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
        raise ValueError(f"npz file {path}: key 'x' must hold vectors N×D or images N×H×W, N×H×W×C "
                         f"or N×C×H×W; got shape {x.shape}")
    if x.shape[-1] in _CHANNEL_COUNTS and x.shape[1] not in _CHANNEL_COUNTS:
        return x.transpose(0, 3, 1, 2)
    if x.shape[1] in _CHANNEL_COUNTS:
        return x
    raise ValueError(f"npz file {path}: cannot tell the channel axis of the images in key 'x': "
                     f"shape {x.shape}, and neither axis 1 nor the last has {_CHANNEL_COUNTS} channels")


def _member(archive, key: str, path: Path) -> np.ndarray:
    """One array of an open npz archive; a damaged member is a ValueError naming file and key."""
    try:
        value = archive[key]
    except Exception as err:  # zipfile, numpy-header and pickle-refusal errors
        raise ValueError(f"npz file {path}: cannot read key {key!r}: {err}") from err
    if not isinstance(value, np.ndarray):  # numpy hands back the raw bytes of a non-.npy member
        raise ValueError(f"npz file {path}: cannot read key {key!r}: its member is not a .npy array")
    return value


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The arrays 'x' and (optional) 'y' of an np.savez archive, unpickled never."""
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
        for key in ("x", "y"):  # from the headers, before a byte of the arrays is read
            if key in archive.files:
                limits.check_npz_member(archive, key, path)
        y = _member(archive, "y", path) if "y" in archive.files else None
        return _member(archive, "x", path), y


def _first(mask: np.ndarray, x: np.ndarray, key: str = "x") -> str:
    """'x[i, j] = v' for the first True of `mask`: where a bad value sits, for the message."""
    index = tuple(int(i) for i in np.argwhere(mask)[0])
    return f"{key}[{', '.join(map(str, index))}] = {x[index]}"


def _npz_floats(x: np.ndarray, path: Path) -> np.ndarray:
    """Float vectors (any finite values) or images in [-1, 1] (to within a rounding tolerance)."""
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused below
        x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(f"npz file {path}: key 'x' holds {int(bad.sum())} non-finite values "
                         f"(NaN, infinite or beyond float32), first {_first(bad, x)}")
    if x.ndim == 2:
        return x
    outside = (x < -1.0 - _FLOAT_RANGE_TOLERANCE) | (x > 1.0 + _FLOAT_RANGE_TOLERANCE)
    if outside.any():
        raise ValueError(f"npz file {path}: float images must lie in [-1, 1], found "
                         f"[{float(x.min()):.4g}, {float(x.max()):.4g}] ({int(outside.sum())} values "
                         f"outside, first {_first(outside, x)}); store uint8 for 0..255 pixels")
    return np.clip(_to_nchw(x, path), -1.0, 1.0)


def _npz_labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    """Key 'y': one non-negative integer class label per example."""
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"npz file {path}: key 'y' must be {n} integer labels, got {y.dtype} {y.shape}")
    if (y < 0).any():
        raise ValueError(f"npz file {path}: key 'y' holds negative labels, first {_first(y < 0, y, 'y')}")
    return y.astype(np.int64)


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """An np.savez archive: key 'x' uint8 images or float vectors / images, optional labels 'y'."""
    x, y = _read_npz(path)
    if x.ndim == 0 or x.size == 0:
        raise ValueError(f"npz file {path}: key 'x' is empty (shape {x.shape}); it must hold examples N×...")
    if x.dtype == np.uint8:
        x = _uint8_to_unit(_to_nchw(x, path))
    elif np.issubdtype(x.dtype, np.floating):
        x = _npz_floats(x, path)
    else:
        raise ValueError(f"npz file {path}: key 'x' must be uint8 or float, got {x.dtype}")
    return x, (None if y is None else _npz_labels(y, len(x), path))


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


def held_out_split(x: np.ndarray, y: np.ndarray | None, held_out: dict, seed: int) -> dict:
    """Seeded disjoint split of the examples: {name: (x, y)} with each split of ``held_out``
    ({name: size}) and ``train``, the rest. One permutation of ``seed`` orders the examples;
    ``test`` (if named) takes its end, every other held-out split a block from its start in the
    order given, and train the middle. So the test images are those that the earlier layout
    (train_test_split: test = the permutation's start) trained on, never the ones that were
    scored and tuned against, whenever the data holds twice the test size or more."""
    n = len(x)
    if y is not None and len(y) != n:
        raise ValueError(f"x has {n} rows but y has {len(y)}")
    sizes = {name: int(size) for name, size in held_out.items()}
    bad = [name for name, size in sizes.items() if size <= 0 or name == "train"]
    if bad:
        raise ValueError(f"held-out splits {bad}: each needs a positive size and a name other than train")
    if sum(sizes.values()) >= n:
        raise ValueError(f"held-out splits {sizes} take {sum(sizes.values())} of {n} examples, "
                         f"leaving none to train on")
    order = np.random.default_rng(seed).permutation(n)
    n_test = sizes.get("test", 0)
    blocks, start = {}, 0
    for name, size in sizes.items():
        if name != "test":
            blocks[name], start = order[start:start + size], start + size
    if n_test:
        blocks["test"] = order[n - n_test:]
    blocks = {"train": order[start:n - n_test], **blocks}
    return {name: (x[idx], None if y is None else y[idx]) for name, idx in blocks.items()}


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
