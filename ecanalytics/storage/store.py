"""Byte-level access to one database root, the same on local disk, ``memory://`` and S3.

All paths given to :class:`Store` are relative to the root. The one operation that is not plain
fsspec is :meth:`Store.create`, a create-only write: S3 ``If-None-Match: *`` through s3fs
``pipe_file(mode="create")``, an atomic ``link`` on local disk (the object appears complete or
not at all), and a process-wide lock for ``memory://``.
"""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import fsspec
import polars as pl
from fsspec.asyn import sync

from ecanalytics import _runtime
from ecanalytics.errors import CorruptObjectError, CredentialsError, EndpointUnreachableError, StorageError
from ecanalytics.storage.config import StorageConfig

_MEMORY_LOCK = threading.Lock()


class Store:
    """Relative-path object access under one root.

    Example:
        >>> s = Store(StorageConfig.from_uri("memory://doc-store"))
        >>> s.create("a/b.json", b"{}"), s.create("a/b.json", b"{}")
        (True, False)
    """

    def __init__(self, config: StorageConfig) -> None:
        self.config = config
        self.fs: fsspec.AbstractFileSystem = config.filesystem()
        self.root = config.root
        self.delete_denied = False  # set once the store refused a delete (e.g. append-only IAM policy)
        # Called with what every read_many fetched: how the CLI's progress bars count objects and rows.
        self.on_read: Callable[[dict[str, bytes | None]], None] | None = None

    @property
    def remote(self) -> bool:
        """Whether each call is a network round trip (S3): worth overlapping on threads."""
        return self.config.protocol == "s3"

    # -- paths -----------------------------------------------------------------------------
    def abs(self, rel: str) -> str:
        """Absolute store path of ``rel``."""
        return f"{self.root}/{rel}" if rel else self.root

    def rel(self, path: str) -> str:
        """Inverse of :meth:`abs` for paths returned by the filesystem."""
        path = path.split("://", 1)[-1] if self.config.protocol != "file" else path
        root = self.root.lstrip("/") if self.config.protocol == "s3" else self.root
        stripped = path.lstrip("/") if self.config.protocol == "s3" else path
        if self.config.protocol == "memory":
            stripped = "/" + path.lstrip("/")
        if not stripped.startswith(root + "/"):
            raise StorageError(f"{path!r} is outside the database root {self.root!r}")
        return stripped[len(root) + 1 :]

    def url(self, rel: str) -> str:
        """A URL for ``rel`` that Polars or DuckDB can open."""
        return self.config.url(self.abs(rel))

    # -- reads -----------------------------------------------------------------------------
    def read(self, rel: str) -> bytes:
        """The bytes of one object; ``FileNotFoundError`` if absent."""
        data: bytes = self.fs.cat_file(self.abs(rel))
        return data

    def read_many(self, rels: Sequence[str]) -> dict[str, bytes | None]:
        """Fetch several objects concurrently (on S3); a missing one maps to None."""
        if not rels:
            return {}
        paths = [self.abs(r) for r in rels]
        got: dict[str, Any] = self.fs.cat(paths, on_error="return")
        out: dict[str, bytes | None] = {}
        for rel, path in zip(rels, paths, strict=True):
            value = got.get(path, got.get(path.lstrip("/")))
            if isinstance(value, FileNotFoundError) or value is None:
                out[rel] = None
            elif isinstance(value, BaseException):
                raise StorageError(f"Reading {self.url(rel)} failed: {value}") from value
            else:
                out[rel] = value
        if self.on_read is not None:
            self.on_read(out)
        return out

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.abs(rel)))

    def size(self, rel: str) -> int | None:
        """The size of ``rel`` in bytes, or None if it does not exist (one HEAD on S3)."""
        try:
            return int(self.fs.info(self.abs(rel))["size"])
        except FileNotFoundError:
            return None

    def _entries(self, rel_dir: str, kind: str) -> list[dict[str, Any]]:
        try:
            entries = self.fs.ls(self.abs(rel_dir), detail=True)
        except FileNotFoundError:
            return []
        return [e for e in entries if e.get("type") == kind]

    def _names(self, rel_dir: str, kind: str) -> list[str]:
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in self._entries(rel_dir, kind))

    def listdir_times(self, rel_dir: str) -> dict[str, float | None]:
        """Names of the files directly inside ``rel_dir`` with their modification time in epoch
        seconds *as the store records it* (S3 ``LastModified``), or None where it says nothing.
        One LIST, like :meth:`listdir`."""
        out: dict[str, float | None] = {}
        for e in self._entries(rel_dir, "file"):
            out[e["name"].rstrip("/").rsplit("/", 1)[-1]] = _mtime(e)
        return out

    def listdir_sizes(self, rel_dir: str) -> dict[str, int | None]:
        """Names of the files directly inside ``rel_dir`` with their sizes in bytes: one LIST,
        where a HEAD per file would cost one request each."""
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: (int(e["size"]) if e.get("size") is not None else None)
                for e in self._entries(rel_dir, "file")}

    def store_now(self, rel_probe: str) -> float | None:
        """The store's own clock: write a tiny probe object and read back its modification time.
        Used instead of this machine's clock wherever an age decides something (never trust a
        clock): two machines' clocks may disagree, the store's clock is one."""
        self.write(rel_probe, b"")
        try:
            info = self.fs.info(self.abs(rel_probe))
        except FileNotFoundError:
            return None
        return _mtime(info)

    def listdir(self, rel_dir: str) -> list[str]:
        """Names of the files directly inside ``rel_dir`` (empty if it does not exist)."""
        return self._names(rel_dir, "file")

    def listdirs(self, rel_dir: str) -> list[str]:
        """Names of the sub-folders directly inside ``rel_dir``."""
        return self._names(rel_dir, "directory")

    def find(self, rel_dir: str, suffix: str = "") -> list[str]:
        """Every file below ``rel_dir`` (recursive), relative to the root, sorted."""
        try:
            found = self.fs.find(self.abs(rel_dir))
        except FileNotFoundError:
            return []
        return sorted(self.rel(p) for p in found if p.endswith(suffix))

    def find_times(self, rel_dir: str) -> dict[str, float | None]:
        """Every file below ``rel_dir`` (recursive) with its modification time by the store's
        clock (epoch seconds, or None where the store gives none)."""
        try:
            found = self.fs.find(self.abs(rel_dir), detail=True)
        except FileNotFoundError:
            return {}
        return {self.rel(path): _mtime(info) for path, info in found.items()}

    def du(self, rel_dir: str, suffix: str = "") -> tuple[int, int]:
        """(object count, total bytes) of the files below ``rel_dir`` ending with ``suffix``."""
        try:
            found = self.fs.find(self.abs(rel_dir), detail=True)
        except FileNotFoundError:
            return 0, 0
        sizes = [int(info.get("size") or 0) for path, info in found.items() if path.endswith(suffix)]
        return len(sizes), sum(sizes)

    # -- writes ----------------------------------------------------------------------------
    @staticmethod
    def _local_temp(path: str, data: bytes) -> str:
        # Local objects are written beside their final name first, so none is ever half-written.
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{_runtime.token()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        return tmp

    def write(self, rel: str, data: bytes) -> None:
        """Write (or overwrite) an object. Local writes go through a temp file and a rename."""
        path = self.abs(rel)
        if self.config.protocol == "file":
            os.replace(self._local_temp(path, data), path)
        else:
            self.fs.pipe_file(path, data)

    def create(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` only if absent. True if this call created it, False if it existed."""
        path = self.abs(rel)
        if self.config.protocol == "file":
            tmp = self._local_temp(path, data)
            try:
                os.link(tmp, path)  # atomic and exclusive, like O_EXCL, but never half-written
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        if self.config.protocol == "memory":
            with _MEMORY_LOCK:
                if self.fs.exists(path):
                    return False
                self.fs.pipe_file(path, data)
            return True
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True

    def copy(self, src: str, dst: str) -> None:
        """Copy one object (server-side on S3)."""
        if self.config.protocol == "file":
            self.write(dst, self.read(src))
        else:
            self.fs.copy(self.abs(src), self.abs(dst))

    def delete(self, rels: Iterable[str]) -> list[str]:
        """Delete objects; returns the ones that could not be deleted (a missing one counts as done).

        The answer is as honest as the store allows: on S3 the per-key ``<Error>`` entries of a
        DeleteObjects answer (which s3fs ignores) are reported, and on local disk or ``memory://``
        every key is tried even after one fails. Correctness never depends on it, though: callers
        treat a key as deleted only once a later LIST no longer shows it. An ``AccessDenied`` sets
        :attr:`delete_denied`, so ``inspect`` can say that the credentials forbid deletes.
        """
        keys = list(rels)
        if not keys:
            return []
        if self.config.protocol == "s3":
            return self._s3_delete(keys)
        failed: list[str] = []
        for rel in keys:
            try:
                self.fs.rm_file(self.abs(rel))
            except FileNotFoundError:
                continue
            except PermissionError:
                self.delete_denied = True
                failed.append(rel)
            except OSError:
                failed.append(rel)
        return failed

    def _s3_delete(self, keys: list[str]) -> list[str]:
        failed: list[str] = []
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            chunk = keys[start : start + 1000]
            bucket = self.fs.split_path(self.abs(chunk[0]))[0]
            objects = [{"Key": self.fs.split_path(self.abs(k))[1]} for k in chunk]
            try:
                # s3fs's public call_s3 binds the class's coroutine, so a wrapper set on this
                # instance (fault injection, request counts) would not see the call.
                answer = sync(self.fs.loop, self.fs._call_s3, "delete_objects", Bucket=bucket,  # noqa: SLF001
                              Delete={"Objects": objects, "Quiet": True})
            except PermissionError:
                self.delete_denied = True
                failed.extend(chunk)
                continue
            except OSError:
                failed.extend(chunk)
                continue
            by_key = {o["Key"]: rel for o, rel in zip(objects, chunk, strict=True)}
            for error in answer.get("Errors", []):
                if error.get("Code") == "AccessDenied":
                    self.delete_denied = True
                if error.get("Code") != "NoSuchKey" and error.get("Key") in by_key:
                    failed.append(by_key[error["Key"]])
        self.fs.invalidate_cache()
        return failed

    # -- parquet helpers -------------------------------------------------------------------
    def write_parquet(self, rel: str, df: pl.DataFrame, *, create: bool = False) -> int:
        """Serialise ``df`` as Parquet (zstd) and store it; ``create`` makes it create-only.
        Returns the bytes written (0 when ``create`` found the object there)."""
        data = parquet_bytes(df)
        if create:
            return len(data) if self.create(rel, data) else 0
        self.write(rel, data)
        return len(data)

    def read_parquet(self, rel: str) -> pl.DataFrame:
        """Read one Parquet object, turning a decode failure into :class:`CorruptObjectError`."""
        return decode_parquet(self.read(rel), self.url(rel))


def _endpoint_name(endpoint: str) -> str:
    """The endpoint as it may be printed: scheme, host, port and path, never user:password@."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


def probe_endpoint(config: StorageConfig, timeout: float = 5.0) -> None:
    """Fail fast, naming the endpoint, when an explicit S3 endpoint does not accept connections.

    botocore would retry a refused connection for more than a minute before giving up. One TCP
    connect tells at once; it is skipped behind an HTTP(S) proxy, which may be the only way out."""
    if config.protocol != "s3" or not config.endpoint_url:
        return
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return
    parts = urlsplit(config.endpoint_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError as exc:
        raise EndpointUnreachableError(
            f"Cannot reach the S3 endpoint {_endpoint_name(config.endpoint_url)} for {config.uri} "
            f"({exc.strerror or type(exc).__name__}); check endpoint_url= / AWS_ENDPOINT_URL and that the "
            "server is running."
        ) from exc


@contextmanager
def s3_errors(config: StorageConfig) -> Iterator[None]:
    """Turn botocore's credential and connection errors into typed errors that say what to do."""
    try:
        yield
    except Exception as exc:
        if config.protocol != "s3":
            raise
        from botocore import exceptions as bx

        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            raise CredentialsError(
                f"No AWS credentials for {config.uri}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, use a profile "
                "(profile= or AWS_PROFILE), or s3://KEY:SECRET@bucket/prefix."
            ) from exc
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
            where = _endpoint_name(config.endpoint_url) if config.endpoint_url else f"of AWS in {config.region}"
            raise EndpointUnreachableError(
                f"Cannot reach the S3 endpoint {where} for {config.uri} ({type(exc).__name__}); check "
                "endpoint_url= / AWS_ENDPOINT_URL, the network, and that the server is running."
            ) from exc
        raise


def _mtime(info: dict[str, Any]) -> float | None:
    """A listing entry's modification time in epoch seconds (S3, local disk and memory spell it differently)."""
    for name in ("LastModified", "mtime", "created"):
        value = info.get(name)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
    return None


def parquet_bytes(df: pl.DataFrame) -> bytes:
    """``df`` as Parquet bytes (zstd, with statistics): the one encoding of every object we write."""
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=True)
    return buf.getvalue()


def decode_parquet(data: bytes, where: str) -> pl.DataFrame:
    """Decode Parquet bytes; a corrupt object raises :class:`CorruptObjectError` naming it."""
    try:
        return pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # polars raises several unrelated types for bad bytes
        raise CorruptObjectError(
            f"{where} is not a readable Parquet file ({type(exc).__name__}: {exc}). Nothing from it "
            "was applied. Inspect it, then move it out of the dataset or restore it from a backup."
        ) from exc
