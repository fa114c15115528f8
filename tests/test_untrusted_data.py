"""Untrusted data files are refused from their headers, naming the file, before anything is
decoded: an image larger than the per-image pixel limit (a decompression bomb, whether PIL would
decode it or refuse it itself), a folder whose images would not fit the memory budget, an .npz
member whose header claims more than memory, and a compressed .npz that would decompress beyond
the budget (refused with almost nothing allocated). docs/security.md names these tests."""
import io
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from diffusion_core.data import limits
from diffusion_core.data.sources import load_source


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG that claims width×height 1-bit pixels in a hundred bytes (its data cut short)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "a.png")
    Image.new("L", (5000, 4000)).save(folder / "b.png")  # 20 million pixels: PIL would decode it
    with pytest.raises(limits.SourceTooLarge, match=r"image .*b\.png is 5000×4000 pixels .* refusing to decode"):
        load_source(f"folder:{folder}", 0, 0)


def test_a_decompression_bomb_beyond_pils_own_limit_is_named(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    _png_header_only(folder / "bomb.png", 20000, 20000)  # 400 million pixels in ~100 bytes
    with pytest.raises(ValueError, match=r"bomb\.png.*(decompression bomb|exceeds limit)"):
        load_source(f"folder:{folder}", 0, 0)


def test_a_folder_beyond_the_memory_budget_is_refused_naming_it(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (256, 256), (i, 0, 0)).save(folder / f"{i}.png")
    monkeypatch.setattr(limits, "memory_budget_bytes", lambda: 1 << 20)
    with pytest.raises(limits.SourceTooLarge, match=rf"image folder {folder} \(5 images of 256×256 pixels\) "
                                                    r"would take .* more than the"):
        load_source(f"folder:{folder}", 0, 0)


def _npz_with_header(path, shape: tuple, dtype: str = "<f4") -> None:
    """An .npz whose member x.npy claims ``shape`` but stores a few bytes of data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + b"\0" * 64)


def test_an_npz_claiming_more_than_memory_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.npz"
    _npz_with_header(path, (10**12, 2))
    with pytest.raises(limits.SourceTooLarge, match=rf"npz file {path}: key 'x' \(shape \(1000000000000, 2\), "
                                                    r"float32\) would take .* refusing to read it"):
        load_source(f"npz:{path}", 0, 0)


def test_a_compressed_npz_that_would_exceed_the_budget_is_refused_before_decompressing(tmp_path, monkeypatch):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((1 << 22, 4), np.float32))  # 64 MiB of zeros in ~64 KiB
    assert path.stat().st_size < 1 << 20
    monkeypatch.setattr(limits, "memory_budget_bytes", lambda: 16 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(limits.SourceTooLarge, match=rf"npz file {path}: key 'x'"):
            load_source(f"npz:{path}", 0, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak} bytes allocated: the array was decompressed"


def test_files_within_the_limits_still_load(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("L", (16, 16), i * 40).save(folder / f"{i}.png")
    x, y = load_source(f"folder:{folder}", 0, 0)
    assert x.shape == (3, 1, 16, 16) and y is None
    np.savez(tmp_path / "ok.npz", x=np.zeros((10, 2), np.float32), y=np.arange(10))
    x, y = load_source(f"npz:{tmp_path / 'ok.npz'}", 0, 0)
    assert x.shape == (10, 2) and list(y) == list(range(10))


class _Payload:
    """Unpickling this object writes a file: what a pickle-based loader would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickled_code_in_an_npz_or_a_weights_file_does_not_run(tmp_path):
    import torch

    from diffusion_core.frameworks import DiffusionModel
    from flows.config.params import parse_params
    from flows.stages import train as train_stage
    from tests.tiny import tiny_params

    marker = tmp_path / "unpickled"
    np.savez(tmp_path / "objects.npz", x=np.array([_Payload(marker)], dtype=object))
    with pytest.raises(ValueError, match=r"objects\.npz: cannot read key 'x'.*allow_pickle"):
        load_source(f"npz:{tmp_path / 'objects.npz'}", 0, 0)
    model_dir = tmp_path / "model"
    config = train_stage.model_config(parse_params(tiny_params()), "ddpm", {"kind": "vector", "shape": [2]})
    DiffusionModel(config).save(model_dir)
    torch.save({"net.weight": _Payload(marker)}, model_dir / "weights.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        DiffusionModel.load(model_dir)
    assert not marker.exists(), "a pickle payload ran"
    torch.load(model_dir / "weights.pt", weights_only=False)  # the payload is live: plain pickle runs it
    assert marker.exists()


def test_a_params_file_with_a_python_tag_runs_nothing(tmp_path):
    from flows.config.params import ConfigError, load_params

    marker = tmp_path / "ran"
    path = tmp_path / "params.yaml"
    path.write_text(f'data: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match=r"params\.yaml: not valid YAML .*python/object/apply"):
        load_params(path)
    assert not marker.exists()
