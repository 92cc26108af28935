"""One canonical storage configuration, translated for fsspec, Polars and DuckDB.

A database root is a URI: a plain path, ``file:///abs/path``, ``memory://name`` or
``s3://[KEY:SECRET@]bucket/prefix``. Credentials, endpoint and region come from the URI, from
explicit options, or from the usual AWS environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``,
``AWS_REGION`` / ``AWS_DEFAULT_REGION``), in that order of precedence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import fsspec

from ecanalytics.errors import ConfigurationError

Protocol = Literal["file", "memory", "s3"]


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


@dataclass(frozen=True)
class StorageConfig:
    """Where a database lives and how to reach it.

    Example:
        >>> StorageConfig.from_uri("memory://demo").root
        '/demo'
    """

    protocol: Protocol
    root: str
    key: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    endpoint_url: str | None = None
    region: str | None = None

    @classmethod
    def from_uri(
        cls,
        uri: str | os.PathLike[str],
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        key: str | None = None,
        secret: str | None = None,
    ) -> StorageConfig:
        """Parse a root URI; options given here win over the URI and the environment."""
        text = os.fspath(uri)
        if not text:
            raise ConfigurationError("The database URI is empty; pass a folder, memory://name or s3://bucket/prefix.")
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
            path = parts.path if scheme == "file" else text
            return cls("file", os.path.abspath(os.path.expanduser(path)).rstrip("/") or "/")
        if scheme == "memory":
            name = (parts.netloc + parts.path).strip("/")
            if not name:
                raise ConfigurationError("memory:// needs a name, for example memory://notebook.")
            return cls("memory", "/" + name)
        if scheme in ("s3", "s3a"):
            # Split by hand: AWS secrets may contain '/' and '+', which urlsplit would take for
            # the start of the path. Everything before the last '@' is KEY:SECRET (URL-encoding
            # is accepted but not required).
            rest = text.split("://", 1)[1]
            userinfo, at, location = rest.rpartition("@")
            if not at:
                location, userinfo = rest, ""
            bucket, _, prefix = location.partition("/")
            if not bucket:
                raise ConfigurationError("An S3 URI needs a bucket: s3://bucket/prefix.")
            raw_key, colon, raw_secret = userinfo.partition(":")
            uri_key = unquote(raw_key) if raw_key else None
            uri_secret = unquote(raw_secret) if colon and raw_secret else None
            return cls(
                "s3",
                f"{bucket}/{prefix.strip('/')}".rstrip("/"),
                key=key or uri_key or _env("AWS_ACCESS_KEY_ID"),
                secret=secret or uri_secret or _env("AWS_SECRET_ACCESS_KEY"),
                token=_env("AWS_SESSION_TOKEN"),
                endpoint_url=endpoint_url or _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
                region=region or _env("AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1",
            )
        raise ConfigurationError(
            f"Unsupported URI scheme {scheme!r}; use a folder path, file://, memory:// or s3://."
        )

    @property
    def uri(self) -> str:
        """The root as a URI, without credentials (safe to print)."""
        return f"{self.protocol}://{self.root.lstrip('/') if self.protocol == 's3' else self.root}"

    def url(self, path: str) -> str:
        """Full URL of an absolute store path, as Polars and DuckDB expect it."""
        if self.protocol == "s3":
            return f"s3://{path}"
        if self.protocol == "memory":
            return f"memory://{path}"
        return path

    def filesystem(self, *, cached_listings: bool = False) -> fsspec.AbstractFileSystem:
        """A new fsspec filesystem for this root (s3fs for S3).

        ``cached_listings`` keeps what a listing learnt about each object, so later ``info``
        calls cost no HEAD request. It suits a reader that invalidates the cache before each
        query (DuckDB); the ledger never uses it, because it must see every new key.
        """
        if self.protocol == "s3":
            import s3fs

            client_kwargs: dict[str, Any] = {"region_name": self.region}
            if self.endpoint_url:
                client_kwargs["endpoint_url"] = self.endpoint_url
            return s3fs.S3FileSystem(
                key=self.key,
                secret=self.secret,
                token=self.token,
                client_kwargs=client_kwargs,
                use_listings_cache=cached_listings,
                skip_instance_cache=True,
                # Our objects are small: one GET each, without the HEAD that sizes a chunked read.
                max_concurrency=1,
                # botocore's adaptive mode retries throttling (503 SlowDown) and timeouts with backoff.
                config_kwargs={"retries": {"max_attempts": 10, "mode": "adaptive"}, "connect_timeout": 10,
                               "read_timeout": 60},
            )
        return fsspec.filesystem(self.protocol, skip_instance_cache=self.protocol == "file")

    def polars_storage_options(self) -> dict[str, str] | None:
        """``storage_options`` for Polars' native object-store reader (S3 only)."""
        if self.protocol != "s3":
            return None
        opts = {"aws_region": self.region or "us-east-1"}
        if self.key:
            opts["aws_access_key_id"] = self.key
        if self.secret:
            opts["aws_secret_access_key"] = self.secret
        if self.token:
            opts["aws_session_token"] = self.token
        if self.endpoint_url:
            opts["aws_endpoint_url"] = self.endpoint_url
            if self.endpoint_url.startswith("http://"):
                opts["aws_allow_http"] = "true"
        return opts
