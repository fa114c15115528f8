"""Webdataset shards with a parquet manifest: write atomically, verify, load, stream.

Layout: ``{split}-{index:06d}.tar`` (samples keyed ``%08d`` holding ``x.npy`` and, with
labels, ``y.cls``) plus ``manifest.parquet`` (one row per shard; data-set metadata as JSON
in the schema metadata under ``dataset``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from diffusion_core.data.atomic import replacing_folder
from diffusion_core.data.digest import file_sha256
from diffusion_core.data.sources import data_kind, value_range

# 2: prepare writes train/val/test (and the feature extractor's split, classifier or
# extractor, for images); 1 had train/test only
SCHEMA_VERSION = 2
_PREPARE_AGAIN = "run `diffusion prepare` again to rewrite the shards"
MANIFEST_NAME = "manifest.parquet"
META_KEY = b"dataset"
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")


class ShardChecksumError(ValueError):
    """A shard is missing or its bytes differ from the manifest."""


def _check_splits(splits: dict) -> tuple[int, ...]:
    """Validate split names and arrays; return the shared per-sample shape."""
    if not splits:
        raise ValueError("splits is empty; give at least one split, e.g. {'train': (x, y)}")
    shapes = set()
    for name, (x, y) in splits.items():
        if not isinstance(name, str) or not _SPLIT_NAME.match(name):
            raise ValueError(f"split name {name!r} must be letters, digits or underscores")
        if not isinstance(x, np.ndarray) or x.ndim < 2 or len(x) == 0:
            raise ValueError(f"split {name!r}: x must be a non-empty array N×..., got {getattr(x, 'shape', x)}")
        if y is not None and np.shape(y) != (len(x),):
            raise ValueError(f"split {name!r}: y must have shape ({len(x)},), got {np.shape(y)}")
        shapes.add(tuple(x.shape[1:]))
    if len(shapes) != 1:
        raise ValueError(f"all splits must share one per-sample shape, got {sorted(shapes)}")
    if len({y is None for _, y in splits.values()}) != 1:
        raise ValueError("either every split has labels or none does")
    return shapes.pop()


def _write_split(folder: Path, split: str, x: np.ndarray, y, per_shard: int) -> list[dict]:
    """Write one split's shards; return their manifest rows."""
    rows = []
    for index, start in enumerate(range(0, len(x), per_shard)):
        name = f"{split}-{index:06d}.tar"
        stop = min(start + per_shard, len(x))
        with wds.TarWriter(str(folder / name), mtime=0.0) as sink:  # fixed mtime: reproducible bytes
            for i in range(start, stop):
                sample = {"__key__": "%08d" % i, "x.npy": np.ascontiguousarray(x[i], dtype=np.float32)}
                if y is not None:
                    sample["y.cls"] = int(y[i])
                sink.write(sample)
        path = folder / name
        rows.append(dict(split=split, shard=name, num_samples=stop - start,
                         num_bytes=path.stat().st_size, sha256=file_sha256(path)))
    return rows


def _dataset_meta(splits: dict, shape: tuple, per_shard: int, extra: dict) -> dict:
    ranges = [value_range(x) for x, _ in splits.values()]
    first_x, first_y = next(iter(splits.values()))
    meta = dict(extra)
    meta.update(
        schema_version=SCHEMA_VERSION,
        shape=list(shape),
        value_range=[min(r[0] for r in ranges), max(r[1] for r in ranges)],
        split_sizes={name: int(len(x)) for name, (x, _) in splits.items()},
        kind=data_kind(first_x) if first_x.ndim in (2, 4) else "array",
        has_labels=first_y is not None,
        samples_per_shard=per_shard,
        dtype="float32",
    )
    return meta


def _manifest_table(rows: list[dict], meta: dict) -> pa.Table:
    schema = pa.schema([("split", pa.string()), ("shard", pa.string()), ("num_samples", pa.int64()),
                        ("num_bytes", pa.int64()), ("sha256", pa.string())])
    try:
        encoded = json.dumps(meta, sort_keys=True)
    except TypeError as err:
        raise ValueError(f"dataset_meta must be JSON-serialisable: {err}") from err
    table = pa.Table.from_pylist(rows, schema=schema)
    return table.replace_schema_metadata({META_KEY: encoded.encode("utf-8")})


def check_replaceable(out_dir) -> None:
    """Only a shard folder (or nothing) may be replaced by new shards: a stage checks this
    before its work, write_shards again before it swaps the new folder in."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"shard output {out_dir} exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).exists():
        raise ValueError(f"refusing to replace {out_dir}: it is not empty and holds no {MANIFEST_NAME}")


def write_shards(out_dir, splits: dict, samples_per_shard: int, dataset_meta: dict) -> Path:
    """Write every split as shards plus the manifest into out_dir, atomically; return the manifest path."""
    if not isinstance(samples_per_shard, (int, np.integer)) or samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be a positive integer, got {samples_per_shard!r}")
    shape = _check_splits(splits)
    meta = _dataset_meta(splits, shape, int(samples_per_shard), dataset_meta or {})
    out_dir = Path(out_dir).absolute()
    check_replaceable(out_dir)
    with replacing_folder(out_dir) as staging:
        rows = []
        for split, (x, y) in splits.items():
            rows += _write_split(staging, split, x, y, int(samples_per_shard))
        pq.write_table(_manifest_table(rows, meta), staging / MANIFEST_NAME)
    return out_dir / MANIFEST_NAME


_COLUMNS = ("split", "shard", "num_samples", "num_bytes", "sha256")
_META_KEYS = ("schema_version", "shape", "kind", "has_labels", "split_sizes", "value_range")
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_]+-[0-9]{6}\.tar$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _read_table(path: Path) -> pa.Table:
    """The manifest's parquet table; an unreadable file is a ValueError naming it."""
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"manifest {path} is not a readable parquet file ({err}); "
                         f"run prepare again to rewrite the shards") from err


def _row_problem(row: dict) -> str | None:
    """What is wrong with one manifest row, or None."""
    if not isinstance(row["shard"], str) or not _SHARD_NAME.match(row["shard"]):
        return "is not a shard file name ({split}-{index:06d}.tar)"
    if not (row["num_samples"] or 0) > 0:
        return "has no positive num_samples"
    if row["num_bytes"] is None or row["num_bytes"] < 0:
        return "has no num_bytes"
    if not isinstance(row["sha256"], str) or not _SHA256.match(row["sha256"]):
        return "has no sha256 of 64 hex digits"
    return None


def _check_rows(table: pa.Table, path: Path) -> None:
    """Every row names a shard file of this folder ({split}-{index:06d}.tar) with a positive
    sample count, a size and a sha256: a bad manifest is refused before any shard is opened."""
    missing = [column for column in _COLUMNS if column not in table.column_names]
    if missing:
        raise ValueError(f"manifest {path} lacks the columns {missing}; rewrite the shards")
    for row in table.select(list(_COLUMNS)).to_pylist():
        problem = _row_problem(row)
        if problem:
            raise ValueError(f"manifest {path}: the row of shard {row['shard']!r} {problem}")


def _decode_meta(raw: bytes, path: Path) -> dict:
    """The data-set metadata of the manifest's schema, with every key the readers use."""
    try:
        meta = json.loads(raw)
    except ValueError as err:  # JSON and Unicode errors
        raise ValueError(f"manifest {path}: its '{META_KEY.decode()}' metadata is not JSON ({err})") from err
    if not isinstance(meta, dict):
        raise ValueError(f"manifest {path}: its '{META_KEY.decode()}' metadata is not a mapping")
    if meta.get("schema_version") != SCHEMA_VERSION:
        before = " (written before the val split: train/test only)" if meta.get("schema_version") == 1 else ""
        raise ValueError(f"manifest {path} has schema_version {meta.get('schema_version')}{before}, "
                         f"this code reads {SCHEMA_VERSION}; {_PREPARE_AGAIN}")
    missing = [key for key in _META_KEYS if key not in meta]
    if missing:
        raise ValueError(f"manifest {path}: its '{META_KEY.decode()}' metadata lacks {missing}; "
                         f"rewrite the shards")
    return meta


def read_manifest(data_dir) -> tuple[pa.Table, dict]:
    """The manifest table (one row per shard) and the data-set metadata dict; a missing,
    unreadable or incomplete manifest is an error naming it."""
    path = Path(data_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"shard manifest not found: {path} (run the prepare stage first)")
    table = _read_table(path)
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise ValueError(f"manifest {path} has no '{META_KEY.decode()}' metadata")
    meta = _decode_meta(raw, path)
    _check_rows(table, path)
    return table, meta


def _split_rows(data_dir, split: str | None, table: pa.Table | None = None) -> list[dict]:
    rows = (table if table is not None else read_manifest(data_dir)[0]).to_pylist()
    if split is None:
        return rows
    chosen = [row for row in rows if row["split"] == split]
    if not chosen:
        known = sorted({row["split"] for row in rows})
        raise ValueError(f"split {split!r} not in {Path(data_dir) / MANIFEST_NAME}; splits: {known}"
                         + (f"; {_PREPARE_AGAIN}" if split in ("val", "classifier") else ""))
    return chosen


def _shard_problem(path: Path, row: dict) -> str | None:
    """What is wrong with one shard file against its manifest row, or None."""
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != row["num_bytes"]:
        return (f"fails its check against the manifest: it has {size} bytes, the manifest "
                f"lists {row['num_bytes']} ({'truncated' if size < row['num_bytes'] else 'grown'})")
    digest = file_sha256(path)
    if digest != row["sha256"]:
        return (f"fails its sha256 check against the manifest: its bytes changed "
                f"(sha256 {digest[:12]}..., the manifest lists {row['sha256'][:12]}...)")
    return None


def _verify_rows(data_dir, rows: list[dict]) -> None:
    for row in rows:
        path = Path(data_dir) / row["shard"]
        problem = _shard_problem(path, row)
        if problem:
            raise ShardChecksumError(f"shard {path} {problem}; run prepare (or the stage that "
                                     f"wrote it) again")


def verify_shards(data_dir, split: str | None = None) -> None:
    """Recompute each shard's sha256 (of one split, or all); ShardChecksumError names a bad one."""
    _verify_rows(data_dir, _split_rows(data_dir, split))


def shard_paths(data_dir, split: str) -> list[str]:
    """Paths of one split's shards, in order."""
    return [str(Path(data_dir) / row["shard"]) for row in _split_rows(data_dir, split)]


def _sample_pair(sample: dict) -> tuple[torch.Tensor, int]:
    x = torch.from_numpy(np.asarray(sample["x.npy"], dtype=np.float32))
    return x, int(sample.get("y.cls", 0))


def _pipeline(paths: list[str], shard_seed=None, shuffle_buffer: int = 0, sample_seed=None):
    """Webdataset pipeline over an explicit shard list yielding (x tensor, label)."""
    stages = [wds.SimpleShardList(paths, seed=shard_seed), wds.tarfile_to_samples()]
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(100, shuffle_buffer), seed=sample_seed))
    stages += [wds.decode(), wds.map(_sample_pair)]
    return wds.DataPipeline(*stages)


def read_shard(data_dir, shard: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Verify one shard named in the manifest, then read it into numpy (for per-shard work)."""
    table, meta = read_manifest(data_dir)
    rows = [row for row in table.to_pylist() if row["shard"] == shard]
    if not rows:
        raise ValueError(f"shard {shard!r} is not listed in {Path(data_dir) / MANIFEST_NAME}")
    _verify_rows(data_dir, rows)
    pairs = list(_pipeline([str(Path(data_dir) / shard)]))
    x = np.stack([p[0].numpy() for p in pairs]).astype(np.float32, copy=False)
    return x, (np.asarray([p[1] for p in pairs], dtype=np.int64) if meta["has_labels"] else None)


def load_split(data_dir, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Verify, then read a whole split into numpy, in written order."""
    table, meta = read_manifest(data_dir)
    rows = _split_rows(data_dir, split, table)
    _verify_rows(data_dir, rows)
    xs, ys = [], []
    for x, y in _pipeline([str(Path(data_dir) / row["shard"]) for row in rows]):
        xs.append(x.numpy())
        ys.append(y)
    x = np.stack(xs).astype(np.float32, copy=False)
    return x, (np.asarray(ys, dtype=np.int64) if meta["has_labels"] else None)


class ShardStream(IterableDataset):
    """Stream one split's shards for one rank; shards go round-robin to ranks, then loader workers."""

    def __init__(self, data_dir, split: str, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 1000, seed: int = 0, epoch: int = 0):
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        rows = _split_rows(data_dir, split)[rank::world_size]
        if not rows:
            raise ValueError(f"split {split!r} in {data_dir} has fewer shards than world_size={world_size}; "
                             "write more shards (need >= world_size x num_workers)")
        _verify_rows(data_dir, rows)
        self.data_dir, self.split, self.rank, self.world_size = str(data_dir), split, rank, world_size
        self.shuffle_buffer, self.seed, self.epoch = shuffle_buffer, seed, epoch
        self.shards = [str(Path(data_dir) / row["shard"]) for row in rows]
        self.num_samples = sum(row["num_samples"] for row in rows)

    def __len__(self) -> int:
        return self.num_samples

    def _seed_for(self, worker: int, stream: int) -> int:
        entropy = [self.seed, self.epoch, self.rank, worker, stream]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0])

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = self.shards[worker::num_workers]
        if not shards:
            raise ValueError(f"rank {self.rank} has {len(self.shards)} shard(s) of split {self.split!r} "
                             f"but {num_workers} loader workers; write more shards "
                             f"(need >= world_size x num_workers = {self.world_size * num_workers})")
        shuffle = self.shuffle_buffer > 0
        return iter(_pipeline(shards, shard_seed=self._seed_for(worker, 0) if shuffle else None,
                              shuffle_buffer=self.shuffle_buffer, sample_seed=self._seed_for(worker, 1)))
