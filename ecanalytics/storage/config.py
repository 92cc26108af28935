"""One canonical storage configuration, translated for fsspec, Polars and DuckDB.

A database root is a URI: a plain path, ``file:///abs/path``, ``memory://name`` or
``s3://[KEY:SECRET@]bucket/prefix``. Credentials, endpoint and region come from the URI, from
explicit options, or from the usual AWS environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``,
``AWS_REGION`` / ``AWS_DEFAULT_REGION``), in that order of precedence.

What a URI may hold (anything else raises :class:`ConfigurationError` before anything is read):

* A plain path is taken as it is (``?`` and ``#`` are ordinary characters there), relative to
  the working directory. ``file:`` URIs need an absolute path, ``file:///abs/path`` (or
  ``file://localhost/abs/path``): ``file://relative/dir`` would silently mean ``/dir``.
* ``file:``, ``memory:`` and ``s3:`` URIs take no ``?query`` or ``#fragment``: options such as
  the endpoint are keyword arguments, never hidden in the URI.
* S3 credentials: a bucket name never contains ``:`` or ``@``, so the URI has credentials exactly
  when the text before the first ``/`` does. ``KEY:SECRET@`` then runs to the *first* ``@``: the
  key ends at the first ``:``, and the secret may contain ``/``, ``+`` and ``:`` but must write
  ``@`` as ``%40`` (URL-encoding is accepted everywhere in the credentials, required nowhere
  else). ``KEY@bucket`` gives a key without a secret. Past the bucket, ``@`` is part of the
  prefix: ``s3://bucket/data@2024/p`` is bucket ``bucket``, prefix ``data@2024/p``.
* A bucket name is letters, digits, ``.``, ``-`` and ``_``. An endpoint is an ``http://`` or
  ``https://`` URL. No part may contain NUL or a lone surrogate.

Options may also come as one ``storage_options`` dict, as deltalake and Polars take them, with
Polars' keys: ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``,
``aws_region``, ``aws_endpoint_url``, ``aws_profile`` (and ``aws_allow_http``, which the endpoint's
scheme decides anyway). :meth:`StorageConfig.polars_storage_options` gives the same dict back.

Credentials are looked for in this order: ``key=``/``secret=``/``token=`` or ``storage_options``,
then the URI, then a named profile (``profile=`` or ``aws_profile``, resolved once by botocore from
``~/.aws/config`` and ``~/.aws/credentials``, including its region), then ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, then the ``AWS_PROFILE`` profile. Whatever is
found, s3fs, Polars and DuckDB all get the same explicit credentials.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import fsspec

from ecanalytics.errors import ConfigurationError, CredentialsError

Protocol = Literal["file", "memory", "s3"]
_BUCKET = re.compile(r"^[A-Za-z0-9._-]+\Z")


# Polars' storage_options keys (also deltalake's) -> our option names.
STORAGE_OPTION_KEYS = {
    "aws_access_key_id": "key", "aws_secret_access_key": "secret", "aws_session_token": "token",
    "aws_region": "region", "aws_endpoint_url": "endpoint_url", "aws_profile": "profile",
}
_LOCAL_HOSTS = ("localhost", "127.", "0.0.0.0", "[::1]", "minio", "moto")


def _options(storage_options: Mapping[str, Any] | None, explicit: dict[str, str | None]) -> dict[str, str | None]:
    """``explicit`` options completed from ``storage_options``; the same option twice with two
    different values is an error rather than a silent choice."""
    if storage_options is None:
        return explicit
    if not isinstance(storage_options, Mapping):
        raise ConfigurationError(f"storage_options must be a dict such as {{'aws_region': 'eu-west-1'}}; "
                                 f"got {type(storage_options).__name__}.")
    merged = dict(explicit)
    for raw_key, value in storage_options.items():
        name = str(raw_key).lower()
        if name == "aws_allow_http":
            continue  # the endpoint's scheme says it
        if name not in STORAGE_OPTION_KEYS:
            raise ConfigurationError(
                f"Unknown storage option {raw_key!r}; use {sorted([*STORAGE_OPTION_KEYS, 'aws_allow_http'])}.")
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f"storage option {raw_key!r} must be a string; got {type(value).__name__}.")
        ours = STORAGE_OPTION_KEYS[name]
        if merged.get(ours) is not None and value is not None and merged[ours] != value:
            raise ConfigurationError(
                f"{ours}= and storage_options[{raw_key!r}] disagree; pass the option once.")
        merged[ours] = merged.get(ours) or value
    return merged


def _endpoint_hint(endpoint: str) -> str:
    host = endpoint.split("/", 1)[0]
    scheme = "http" if host.startswith(_LOCAL_HOSTS) else "https"
    return f"{scheme}://{endpoint}"


def _profile(name: str) -> tuple[str | None, str | None, str | None, str | None]:
    """(key, secret, token, region) of AWS profile ``name``, resolved once through botocore."""
    import botocore.session
    from botocore.exceptions import BotoCoreError, ProfileNotFound

    try:
        session = botocore.session.Session(profile=name)
        credentials = session.get_credentials()
        region = session.get_config_variable("region")
    except ProfileNotFound as exc:
        raise CredentialsError(
            f"The AWS profile {name!r} does not exist in ~/.aws/config or ~/.aws/credentials (or in "
            "AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE); check its name, or pass key= and secret=."
        ) from exc
    except BotoCoreError as exc:
        raise CredentialsError(f"The AWS profile {name!r} cannot be read ({type(exc).__name__}); fix it, or pass "
                               "key= and secret=.") from exc
    if credentials is None:
        raise CredentialsError(f"The AWS profile {name!r} holds no credentials; add aws_access_key_id and "
                               "aws_secret_access_key to it, or pass key= and secret=.")
    frozen = credentials.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token, region


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
    profile: str | None = None  # the AWS profile the credentials came from, if any

    @classmethod
    def from_uri(
        cls,
        uri: str | os.PathLike[str],
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        key: str | None = None,
        secret: str | None = None,
        token: str | None = None,
        profile: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> StorageConfig:
        """Parse a root URI (rules in the module docstring); options given here (or in
        ``storage_options``) win over the URI and the environment. Error messages never repeat
        an S3 URI, which may hold a secret."""
        opts = _options(storage_options, {"key": key, "secret": secret, "token": token, "region": region,
                                          "endpoint_url": endpoint_url, "profile": profile})
        key, secret, token, region = opts["key"], opts["secret"], opts["token"], opts["region"]
        endpoint_url, profile = opts["endpoint_url"], opts["profile"]
        try:
            text = os.fspath(uri)
        except TypeError:
            text = None
        if not isinstance(text, str):
            raise ConfigurationError(
                f"The database URI must be a str or a path; got {type(uri).__name__}. "
                "Pass a folder, memory://name or s3://bucket/prefix."
            )
        if not text:
            raise ConfigurationError("The database URI is empty; pass a folder, memory://name or s3://bucket/prefix.")
        if "\x00" in text or any(0xD800 <= ord(c) < 0xE000 for c in text):
            raise ConfigurationError("The database URI contains NUL or a lone surrogate; pass valid text.")
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme in ("file", "memory") and ("?" in text or "#" in text):
            raise ConfigurationError(
                f"{scheme}: URIs take no ?query or #fragment; pass options as keyword arguments "
                "(a folder whose name has '?' or '#' can be given as a plain path)."
            )
        if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
            if scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path.startswith("/")):
                raise ConfigurationError(
                    f"{text!r} is not an absolute file URI; use file:///abs/path (three slashes), or pass a "
                    f"relative folder without the scheme, e.g. {(parts.netloc + parts.path) or '.'!r}."
                )
            path = parts.path if scheme == "file" else text
            return cls("file", os.path.abspath(os.path.expanduser(path)).rstrip("/") or "/")
        if scheme == "memory":
            name = (parts.netloc + parts.path).strip("/")
            if not name:
                raise ConfigurationError("memory:// needs a name, for example memory://notebook.")
            return cls("memory", "/" + name)
        if scheme in ("s3", "s3a"):
            # Split by hand: AWS secrets may contain '/' and '+', which urlsplit would take for the
            # start of the path. Credentials are there iff the text before the first '/' has ':'
            # or '@' (a bucket name has neither); then they end at the first '@'.
            rest = text.split("://", 1)[1]
            head = rest.split("/", 1)[0]
            userinfo, location = "", rest
            if ":" in head or "@" in head:
                userinfo, at, location = rest.partition("@")
                if not at:
                    raise ConfigurationError(
                        "An S3 URI with ':' before the first '/' needs credentials, s3://KEY:SECRET@bucket/prefix; "
                        "a host:port goes in endpoint_url=."
                    )
            if "?" in location or "#" in location:
                raise ConfigurationError(
                    "S3 URIs take no ?query or #fragment; pass endpoint_url=, region=, key= and secret= as "
                    "keyword arguments instead."
                )
            bucket, _, prefix = location.partition("/")
            if not bucket:
                raise ConfigurationError("An S3 URI needs a bucket: s3://bucket/prefix.")
            if not _BUCKET.match(bucket):
                raise ConfigurationError(
                    "The S3 bucket name may hold only letters, digits, '.', '-' and '_'; if the secret in "
                    "s3://KEY:SECRET@bucket contains '@', write it as %40."
                )
            raw_key, colon, raw_secret = userinfo.partition(":")
            uri_key = unquote(raw_key) if raw_key else None
            uri_secret = unquote(raw_secret) if colon and raw_secret else None
            endpoint = endpoint_url or _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
            if endpoint is not None and (not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))):
                hint = (f" Did you mean {_endpoint_hint(endpoint)!r}?"
                        if isinstance(endpoint, str) and endpoint and "://" not in endpoint else "")
                raise ConfigurationError(
                    f"The S3 endpoint must be an http:// or https:// URL such as http://127.0.0.1:9000; "
                    f"got {endpoint!r}.{hint}"
                )
            key, secret = key or uri_key, secret or uri_secret
            # A named profile beats the environment's keys; AWS_PROFILE comes after them.
            named = profile or (None if _env("AWS_ACCESS_KEY_ID") else _env("AWS_PROFILE"))
            if key is None and secret is None and named:
                key, secret, profile_token, profile_region = _profile(named)
                token, region = token or profile_token, region or profile_region
            else:
                named = None
                if key is None:  # the environment's session token goes with the environment's key
                    token = token or _env("AWS_SESSION_TOKEN")
                key, secret = key or _env("AWS_ACCESS_KEY_ID"), secret or _env("AWS_SECRET_ACCESS_KEY")
            return cls(
                "s3",
                f"{bucket}/{prefix.strip('/')}".rstrip("/"),
                key=key,
                secret=secret,
                token=token,
                endpoint_url=endpoint,
                region=region or _env("AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1",
                profile=named,
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
