"""Data layer: toys, sources, shards and streaming."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from diffusion_core.data import (
    SCHEMA_VERSION,
    TOY_NAMES,
    ShardChecksumError,
    ShardStream,
    checkerboard_support,
    data_kind,
    gmm8_params,
    load_source,
    load_split,
    off_support_fraction,
    read_manifest,
    sample_toy,
    shard_paths,
    shards,
    toy_log_density,
    train_test_split,
    value_range,
    verify_shards,
    write_shards,
)

# ---------------------------------------------------------------- toys

@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_shapes_and_range(name):
    x = sample_toy(name, 2000, np.random.default_rng(0))
    assert x.shape == (2000, 2) and x.dtype == np.float32
    assert np.all(np.abs(x) < 3.0)
    assert np.abs(x).max() > 1.0  # scaled to roughly [-2, 2], not [-1, 1]
    np.testing.assert_array_equal(x, sample_toy(name, 2000, np.random.default_rng(0)))


def test_checkerboard_samples_in_support():
    x = sample_toy("checkerboard", 5000, np.random.default_rng(1))
    assert off_support_fraction("checkerboard", x) == 0.0
    assert checkerboard_support(np.array([[-1.5, -1.5], [-0.5, -1.5], [2.5, 0.0]])).tolist() == [True, False, False]
    density = toy_log_density("checkerboard", np.array([[0.5, 0.5], [0.5, -0.5]]))
    assert density[0] == pytest.approx(np.log(1 / 8)) and density[1] == -np.inf


def test_gmm8_density_integrates_to_one():
    grid = np.linspace(-3.5, 3.5, 561)
    xx, yy = np.meshgrid(grid, grid)
    points = np.stack([xx.ravel(), yy.ravel()], axis=1)
    mass = np.exp(toy_log_density("gmm8", points)).sum() * (grid[1] - grid[0]) ** 2
    assert mass == pytest.approx(1.0, abs=1e-3)
    weights, means, std = gmm8_params()
    assert weights.shape == (8,) and means.shape == (8, 2) and std == pytest.approx(0.15)
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 2.0)
    x = sample_toy("gmm8", 5000, np.random.default_rng(2))
    assert off_support_fraction("gmm8", x) < 0.005
    assert off_support_fraction("gmm8", np.zeros((3, 2))) == 1.0


def test_toy_errors_name_the_toy():
    with pytest.raises(ValueError, match="swissroll"):
        toy_log_density("swissroll", np.zeros((1, 2)))
    with pytest.raises(ValueError, match="moons"):
        off_support_fraction("moons", np.zeros((1, 2)))
    with pytest.raises(ValueError, match="spiral"):
        sample_toy("spiral", 10, np.random.default_rng(0))


# ---------------------------------------------------------------- sources

def test_toy_source_and_split():
    x, y = load_source("toy:moons", 100, seed=3)
    assert x.shape == (100, 2) and y is None and data_kind(x) == "vector"
    np.testing.assert_array_equal(x, load_source("toy:moons", 100, seed=3)[0])
    labels = np.arange(100)
    x_tr, y_tr, x_te, y_te = train_test_split(x, labels, 0.2, seed=0)
    assert len(x_te) == 20 and len(x_tr) == 80
    assert sorted(np.concatenate([y_tr, y_te]).tolist()) == list(range(100))
    np.testing.assert_array_equal(x_te, x[y_te])
    assert train_test_split(x, None, 10, seed=0)[3] is None
    with pytest.raises(ValueError, match="test_size"):
        train_test_split(x, None, 100, seed=0)


def test_digits_source():
    x, y = load_source("digits", 0, seed=0)
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert value_range(x) == (-1.0, 1.0) and data_kind(x) == "image"
    assert y.dtype == np.int64 and set(y.tolist()) == set(range(10))


def test_npz_source_uint8_nhwc_and_float(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    images[0, 0, 0, 0], images[0, 0, 0, 1] = 0, 255
    np.savez(tmp_path / "a.npz", x=images, y=np.arange(5))
    x, y = load_source(f"npz:{tmp_path / 'a.npz'}", 0, seed=0)
    assert x.shape == (5, 3, 6, 7) and x.dtype == np.float32 and value_range(x) == (-1.0, 1.0)
    np.testing.assert_allclose(x[1, 2], images[1, :, :, 2] / 127.5 - 1.0, atol=1e-6)
    assert y.tolist() == [0, 1, 2, 3, 4] and y.dtype == np.int64
    floats = np.linspace(-1, 1, 5 * 3 * 4 * 4, dtype=np.float32).reshape(5, 3, 4, 4)
    np.savez(tmp_path / "b.npz", x=floats)
    x, y = load_source(f"npz:{tmp_path / 'b.npz'}", 0, seed=0)
    np.testing.assert_array_equal(x, floats)
    assert y is None
    np.savez(tmp_path / "c.npz", x=floats * 3)
    with pytest.raises(ValueError, match="c.npz"):
        load_source(f"npz:{tmp_path / 'c.npz'}", 0, seed=0)


def test_folder_source(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(tmp_path / f"img{i}.png")
    x, y = load_source(f"folder:{tmp_path}", 0, seed=0)
    assert x.shape == (3, 3, 5, 4) and y is None
    np.testing.assert_allclose(x[2], pixels[2].transpose(2, 0, 1) / 127.5 - 1.0, atol=1e-6)
    Image.fromarray(pixels[0, :4]).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="odd.png"):
        load_source(f"folder:{tmp_path}", 0, seed=0)


def test_source_errors_name_the_input(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_source(f"folder:{missing}", 0, seed=0)
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        load_source(f"npz:{missing}.npz", 0, seed=0)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        load_source(f"npz:{tmp_path / 'bad.npz'}", 0, seed=0)
    with pytest.raises(ValueError, match="cifar99.*toy:<name>"):
        load_source("cifar99", 10, seed=0)


# ---------------------------------------------------------------- shards

@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """8 train shards of 12-13 labelled 1×4×4 images and 2 test shards."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (100, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 10, 100)
    out = tmp_path_factory.mktemp("shards") / "digits"
    write_shards(out, {"train": (x[:80], y[:80]), "test": (x[80:], y[80:])}, 10, {"source": "unit", "seed": 0})
    return out, x, y


def test_manifest_fields(shard_dir):
    out, x, _ = shard_dir
    table, meta = read_manifest(out)
    assert meta["split_sizes"] == {"train": 80, "test": 20}
    assert meta["shape"] == [1, 4, 4] and meta["kind"] == "image"
    assert meta["schema_version"] == SCHEMA_VERSION and meta["source"] == "unit"
    assert meta["value_range"] == pytest.approx([float(x.min()), float(x.max())])
    rows = table.to_pylist()
    assert [r["shard"] for r in rows[:2]] == ["train-000000.tar", "train-000001.tar"]
    assert sum(r["num_samples"] for r in rows) == 100
    assert all(len(r["sha256"]) == 64 and r["num_bytes"] == (out / r["shard"]).stat().st_size for r in rows)
    assert len(shard_paths(out, "test")) == 2


def test_round_trip_exact(shard_dir):
    out, x, y = shard_dir
    verify_shards(out)
    x_tr, y_tr = load_split(out, "train")
    np.testing.assert_array_equal(x_tr, x[:80])
    np.testing.assert_array_equal(y_tr, y[:80])
    assert y_tr.dtype == np.int64 and x_tr.dtype == np.float32


def test_unlabelled_vectors_round_trip(tmp_path):
    x = sample_toy("gmm8", 25, np.random.default_rng(0))
    manifest = write_shards(tmp_path / "toy", {"train": (x, None)}, 7, {})
    assert manifest.name == "manifest.parquet"
    x_back, y_back = load_split(tmp_path / "toy", "train")
    np.testing.assert_array_equal(x_back, x)
    assert y_back is None and read_manifest(tmp_path / "toy")[1]["kind"] == "vector"
    batch_x, batch_y = next(iter(DataLoader(ShardStream(tmp_path / "toy", "train"), batch_size=25)))
    assert batch_x.shape == (25, 2) and torch.all(batch_y == 0)


def _stream_keys(out, rank, world_size, epoch=0):
    stream = ShardStream(out, "train", rank=rank, world_size=world_size, shuffle_buffer=16, seed=5, epoch=epoch)
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    return [tuple(x.flatten().tolist()) for x, _ in loader]


def test_stream_two_ranks_two_workers_cover_each_sample_once(shard_dir):
    out, x, _ = shard_dir
    seen = _stream_keys(out, 0, 2) + _stream_keys(out, 1, 2)
    assert len(seen) == 80
    assert sorted(seen) == sorted(tuple(row.flatten().tolist()) for row in x[:80])
    assert _stream_keys(out, 0, 2) == _stream_keys(out, 0, 2)  # deterministic for seed + epoch
    assert _stream_keys(out, 0, 2, epoch=1) != _stream_keys(out, 0, 2)


def test_stream_too_few_shards(shard_dir, monkeypatch):
    out, _, _ = shard_dir
    with pytest.raises(ValueError, match="more shards"):
        ShardStream(out, "test", rank=2, world_size=3)
    stream = ShardStream(out, "test", rank=1, world_size=2)  # one shard for this rank
    # as seen from the second of two loader workers (a real worker's error costs seconds of shutdown)
    monkeypatch.setattr(shards, "get_worker_info", lambda: SimpleNamespace(id=1, num_workers=2))
    with pytest.raises(ValueError, match="more shards"):
        iter(stream)


def test_corrupt_shard_is_named(tmp_path):
    x = np.random.default_rng(0).normal(size=(30, 2)).astype(np.float32)
    out = tmp_path / "toy"
    write_shards(out, {"train": (x, None)}, 10, {})
    shard = out / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardChecksumError, match="train-000001.tar"):
        verify_shards(out)
    with pytest.raises(ShardChecksumError, match="train-000001.tar"):
        load_split(out, "train")
    with pytest.raises(ShardChecksumError, match="train-000001.tar"):
        ShardStream(out, "train", rank=1, world_size=2)
    ShardStream(out, "train", rank=0, world_size=2)  # this rank's shards are intact
    shard.unlink()
    with pytest.raises(ShardChecksumError, match="train-000001.tar is missing"):
        verify_shards(out, "train")


def test_rewrite_replaces_atomically_and_validates(tmp_path):
    out = tmp_path / "toy"
    x = np.zeros((10, 2), np.float32)
    write_shards(out, {"train": (x, None)}, 3, {})
    first = read_manifest(out)[0].column("sha256").to_pylist()
    write_shards(out, {"train": (x, None)}, 3, {})
    assert read_manifest(out)[0].column("sha256").to_pylist() == first  # reproducible bytes
    write_shards(out, {"train": (x[:4], None)}, 4, {})
    assert sorted(p.name for p in out.iterdir()) == ["manifest.parquet", "train-000000.tar"]
    with pytest.raises(ValueError, match="samples_per_shard"):
        write_shards(out, {"train": (x, None)}, 0, {})
    with pytest.raises(ValueError, match="dataset_meta"):
        write_shards(out, {"train": (x, None)}, 3, {"bad": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no staging folders left
    assert len(load_split(out, "train")[0]) == 4
    with pytest.raises(FileNotFoundError, match="manifest.parquet"):
        read_manifest(tmp_path / "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing"):
        write_shards(tmp_path / "notes", {"train": (x, None)}, 3, {})
    assert (tmp_path / "notes" / "keep.txt").exists()
