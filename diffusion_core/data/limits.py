"""Limits on untrusted data files, checked from their headers before anything is decoded.

A `folder:` image may claim any size in a few bytes of header (a decompression bomb), and an
`.npz` member may claim, or decompress to, more than the machine's memory. Either is refused
with a ValueError naming the file, before its pixels or arrays are read, instead of the loader
being killed for memory or swapping without end.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

# Pixels (width × height) one image of a data set may have: 4096², far above what diffusion
# models are trained on here, far below PIL's own bomb limit of about 89 million.
MAX_IMAGE_PIXELS = 4096 * 4096
FLOAT32_BYTES = 4


class SourceTooLarge(ValueError):
    """A data file whose decoded contents exceed a limit; the message names the file."""


def memory_budget_bytes() -> int:
    """What a data source may take in memory once decoded: half the machine's physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # no sysconf: a conservative 8 GiB
        return 8 << 30


def _gib(nbytes: float) -> str:
    return f"{nbytes / (1 << 30):.3g} GiB"


def check_fits_memory(nbytes: int, what: str) -> None:
    """SourceTooLarge naming ``what`` when ``nbytes`` exceed ``memory_budget_bytes``."""
    budget = memory_budget_bytes()
    if nbytes > budget:
        raise SourceTooLarge(f"{what} would take {_gib(nbytes)} in memory once decoded, more than the "
                             f"{_gib(budget)} a data source may use (half this machine's memory): "
                             f"refusing to read it")


def check_image_size(size: tuple[int, int], path: Path) -> None:
    """An image header's (width, height) within MAX_IMAGE_PIXELS, else SourceTooLarge naming it."""
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise SourceTooLarge(f"image {path} is {width}×{height} pixels (width×height), more than the "
                             f"{MAX_IMAGE_PIXELS} pixels an image of a data set may have (a "
                             f"decompression bomb, or not a training image): refusing to decode it")


def folder_bytes(count: int, size: tuple[int, int], channels: int) -> int:
    """Memory the folder loader holds at its peak for ``count`` images of ``size``: the decoded
    uint8 pixels twice (the list and its stack) and their float32 copy."""
    return count * size[0] * size[1] * channels * (2 + FLOAT32_BYTES)


def npz_member_header(archive, key: str, path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """(shape, dtype) of ``key`` in an open np.load archive, from its .npy header alone (nothing
    decompressed beyond it); None when the member is not a .npy file (the loader names that)."""
    member = f"{key}.npy"
    if member not in archive.zip.namelist():
        return None
    try:
        with archive.zip.open(member) as fh:
            version = np.lib.format.read_magic(fh)
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f".npy format version {version} is not read here (1.0 and 2.0 are)")
            shape, _, dtype = read(fh)
    except Exception as err:  # zipfile and numpy-header errors
        raise ValueError(f"npz file {path}: cannot read key {key!r}: {err}") from err
    return shape, dtype


def check_npz_member(archive, key: str, path: Path) -> None:
    """SourceTooLarge naming the file and key when the member's header claims an array that
    would not fit the memory budget (stored, plus its float32 copy)."""
    header = npz_member_header(archive, key, path)
    if header is None:
        return
    shape, dtype = header
    count = math.prod(shape)
    check_fits_memory(count * (dtype.itemsize + FLOAT32_BYTES),
                      f"npz file {path}: key {key!r} (shape {shape}, {dtype})")
