"""The one way outputs are written (diffusion_core/data/atomic.py): a crash or an error while
writing leaves the old output whole, and nothing half-written or temporary behind."""
from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from diffusion_core.data import atomic


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_file_is_replaced_whole_and_an_error_keeps_the_old_one(tmp_path):
    path = tmp_path / "metrics.json"
    atomic.write_json(path, {"fd": 1.0})
    atomic.write_json(path, {"fd": 2.0})
    assert json.loads(path.read_text()) == {"fd": 2.0}
    with pytest.raises(RuntimeError, match="crash"):
        with atomic.atomic_path(path) as tmp:
            tmp.write_text('{"fd": 3')  # half a file, then the writer dies
            raise RuntimeError("crash")
    assert json.loads(path.read_text()) == {"fd": 2.0}
    assert _names(tmp_path) == ["metrics.json"]


def test_a_full_disk_while_saving_arrays_keeps_the_old_samples(tmp_path, monkeypatch):
    path = tmp_path / "samples.npz"
    atomic.save_npz(path, x=np.zeros(3))

    def full_disk(fh, **arrays):
        fh.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.np, "savez", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic.save_npz(path, x=np.ones(3))
    monkeypatch.undo()
    with np.load(path) as saved:
        assert np.array_equal(saved["x"], np.zeros(3))
    assert _names(tmp_path) == ["samples.npz"]


def test_save_npz_keeps_the_exact_name(tmp_path):
    atomic.save_npz(tmp_path / "part.data", x=np.arange(4))
    assert _names(tmp_path) == ["part.data"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_folder_is_swapped_in_only_when_complete(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = tmp_path / "model"
    with atomic.replacing_folder(out) as staging:
        (staging / "weights.pt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic.replacing_folder(out) as staging:
            (staging / "weights.pt").write_text("new, half")
            raise KeyboardInterrupt  # killed halfway
    assert _names(out) == ["weights.pt"] and (out / "weights.pt").read_text() == "old"
    with atomic.replacing_folder(out) as staging:
        (staging / "weights.pt").write_text("new")
        (staging / "model.json").write_text("{}")
    assert _names(out) == ["model.json", "weights.pt"] and (out / "weights.pt").read_text() == "new"
    assert _names(tmp_path) == ["model"]  # no staging or old folder left


def test_a_file_in_the_way_of_a_folder_is_refused(tmp_path):
    (tmp_path / "models").write_text("not a folder")
    with pytest.raises(ValueError, match="not a folder"):
        with atomic.replacing_folder(tmp_path / "models") as staging:
            (staging / "x").write_text("1")
    assert (tmp_path / "models").read_text() == "not a folder"


def test_temporary_names_differ_between_writers(tmp_path):
    names = {atomic.temporary_name(tmp_path / "out.json") for _ in range(100)}
    assert len(names) == 100 and all(n.name.startswith(".out.json.tmp-") for n in names)


def test_equal_weights_save_to_equal_bytes(tmp_path):
    """A model's weights file is written under a temporary name first; its bytes (and so the
    sha256 that fingerprints sample plans and reproducible runs) must not depend on that name."""
    import hashlib

    import torch

    from diffusion_core.frameworks import DiffusionModel

    config = {"framework": "ddpm", "process": {"kind": "vp"}, "parameterization": "edm",
              "sigma_data": 0.5, "loss": {"kind": "ddpm"}, "data_shape": [2],
              "network": {"kind": "mlp", "dim": 2, "width": 16, "depth": 1, "emb_dim": 8}}
    torch.manual_seed(0)
    model = DiffusionModel(config)
    model.save(tmp_path / "a")
    model.save(tmp_path / "b")
    digests = {hashlib.sha256((tmp_path / d / "weights.pt").read_bytes()).hexdigest() for d in "ab"}
    assert len(digests) == 1
    loaded = DiffusionModel.load(tmp_path / "a")
    assert all(torch.equal(p, q) for p, q in zip(model.denoiser.net.parameters(),
                                                  loaded.denoiser.net.parameters()))


def test_what_a_crashed_writer_left_is_removed_and_a_live_ones_kept(tmp_path):
    import os
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(gone.stdout)
    crashed = tmp_path / f".metrics.json.tmp-{dead}-0123abcd"
    crashed_folder = tmp_path / f".metrics.json.old-{dead}-89abcdef"
    live = tmp_path / f".metrics.json.tmp-{os.getpid()}-fedcba98"
    for leftover in (crashed, live):
        leftover.write_text("half")
    crashed_folder.mkdir()
    atomic.write_json(tmp_path / "metrics.json", {"fd": 1.0})
    assert _names(tmp_path) == sorted([live.name, "metrics.json"])


def test_a_picture_is_replaced_whole(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from flows.stages.plots import save_figure

    path = tmp_path / "samples.png"
    fig, _ = plt.subplots()
    save_figure(fig, path)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")
    fig, _ = plt.subplots()

    def crash(target, **kwargs):
        open(target, "wb").write(b"\x89PNG half")
        raise RuntimeError("killed while drawing")

    monkeypatch.setattr(fig, "savefig", crash)
    with pytest.raises(RuntimeError):
        save_figure(fig, path)
    assert path.read_bytes() == before and _names(tmp_path) == ["samples.png"]
