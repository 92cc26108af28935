"""Storage layer: URIs, filesystems, paths. The only package that imports fsspec or s3fs."""

from ecanalytics.storage.config import StorageConfig
from ecanalytics.storage.store import Store, decode_parquet, parquet_bytes

__all__ = ["StorageConfig", "Store", "decode_parquet", "parquet_bytes"]
