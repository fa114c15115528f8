"""Data I/O: toy distributions, sources, and webdataset shards with a parquet manifest."""
from diffusion_core.data.shards import (
    SCHEMA_VERSION,
    ShardChecksumError,
    ShardStream,
    load_split,
    read_manifest,
    shard_paths,
    verify_shards,
    write_shards,
)
from diffusion_core.data.sources import (
    data_kind,
    held_out_split,
    load_source,
    train_test_split,
    value_range,
)
from diffusion_core.data.toys import (
    TOY_NAMES,
    checkerboard_support,
    gmm8_params,
    off_support_fraction,
    sample_toy,
    toy_log_density,
)

__all__ = [
    "SCHEMA_VERSION",
    "ShardChecksumError",
    "ShardStream",
    "TOY_NAMES",
    "checkerboard_support",
    "data_kind",
    "gmm8_params",
    "held_out_split",
    "load_source",
    "load_split",
    "off_support_fraction",
    "read_manifest",
    "sample_toy",
    "shard_paths",
    "toy_log_density",
    "train_test_split",
    "value_range",
    "verify_shards",
    "write_shards",
]
