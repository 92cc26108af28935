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
then the URI (these are *static* keys, used as given), then botocore's provider chain: a named
profile (``profile=`` or ``aws_profile``; its region too), then ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, then the ``AWS_PROFILE`` profile, web identity
(IRSA), SSO, ``credential_process``, container and instance roles. Credentials from the chain are
never frozen at connect: s3fs, Polars (:meth:`StorageConfig.polars_credential_provider`) and DuckDB
ask the chain again, so temporary credentials (SSO, assume-role, an instance role) are refreshed
before they expire, also under a long ``consolidate --watch``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import fsspec

from ecanalytics.errors import ConfigurationError, CredentialsError, InvalidUriError

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


def _profile(name: str) -> str | None:
    """Check that AWS profile ``name`` exists and yields credentials; return its region. The
    credentials themselves are not kept: the chain is asked again whenever they are needed."""
    import botocore.session
    from botocore.exceptions import BotoCoreError, ProfileNotFound

    try:
        session = botocore.session.Session(profile=name)
        credentials = session.get_credentials()
        region: str | None = session.get_config_variable("region")
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
    return region


def _chain_credentials(profile: str | None) -> Any:
    """botocore's credentials from its provider chain (refreshable ones refresh themselves), or None."""
    import botocore.session

    return botocore.session.Session(profile=profile).get_credentials()


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
    profile: str | None = None  # the named AWS profile (profile= or aws_profile), if any
    # botocore's credentials from the chain, looked up once on first use (they refresh themselves).
    _chain: list[Any] = field(default_factory=list, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle credentials (Dask tasks carry configs): a copy asks the chain itself.
        return {**self.__dict__, "_chain": []}

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
            raise InvalidUriError(
                f"The database URI must be a str or a path; got {type(uri).__name__}. "
                "Pass a folder, memory://name or s3://bucket/prefix."
            )
        if not text:
            raise InvalidUriError("The database URI is empty; pass a folder, memory://name or s3://bucket/prefix.")
        if "\x00" in text or any(0xD800 <= ord(c) < 0xE000 for c in text):
            raise InvalidUriError("The database URI contains NUL or a lone surrogate; pass valid text.")
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme in ("file", "memory") and ("?" in text or "#" in text):
            raise InvalidUriError(
                f"{scheme}: URIs take no ?query or #fragment; pass options as keyword arguments "
                "(a folder whose name has '?' or '#' can be given as a plain path)."
            )
        if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
            if scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path.startswith("/")):
                raise InvalidUriError(
                    f"{text!r} is not an absolute file URI; use file:///abs/path (three slashes), or pass a "
                    f"relative folder without the scheme, e.g. {(parts.netloc + parts.path) or '.'!r}."
                )
            path = parts.path if scheme == "file" else text
            return cls("file", os.path.abspath(os.path.expanduser(path)).rstrip("/") or "/")
        if scheme == "memory":
            name = (parts.netloc + parts.path).strip("/")
            if not name:
                raise InvalidUriError("memory:// needs a name, for example memory://notebook.")
            return cls("memory", "/" + name)
        if scheme in ("s3", "s3a") and not text[len(scheme) + 1:].startswith("//"):
            # s3:/bucket/demo: urlsplit would take "bucket" for part of the path.
            rest = text[len(scheme) + 1:].lstrip("/")
            secretive = any(c in rest.split("/", 1)[0] for c in ":@")
            meant = f"{scheme}://{rest}" if rest and not secretive else f"{scheme}://bucket/prefix"
            shown = f"{text!r} is" if not secretive else "The URI is"
            raise InvalidUriError(f"{shown} not an S3 URI: it needs two slashes after '{scheme}:'. Did you mean {meant!r}?")
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
                    raise InvalidUriError(
                        "An S3 URI with ':' before the first '/' needs credentials, s3://KEY:SECRET@bucket/prefix; "
                        "a host:port goes in endpoint_url=."
                    )
            if "?" in location or "#" in location:
                raise InvalidUriError(
                    "S3 URIs take no ?query or #fragment; pass endpoint_url=, region=, key= and secret= as "
                    "keyword arguments instead."
                )
            bucket, _, prefix = location.partition("/")
            if not bucket:
                raise InvalidUriError("An S3 URI needs a bucket: s3://bucket/prefix.")
            if not _BUCKET.match(bucket):
                raise InvalidUriError(
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
            if key is None and secret is None and token is not None:  # a token= goes with the environment's keys
                key, secret = _env("AWS_ACCESS_KEY_ID"), _env("AWS_SECRET_ACCESS_KEY")
            named = None
            if key is None and secret is None:
                # botocore's chain: a named profile beats the environment's keys, which beat
                # AWS_PROFILE (the profile's region counts; its credentials are not frozen here).
                named, token = profile, None
                chain_profile = profile or (None if _env("AWS_ACCESS_KEY_ID") else _env("AWS_PROFILE"))
                if chain_profile:
                    region = region or _profile(chain_profile)
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
        raise InvalidUriError(
            f"Unsupported URI scheme {scheme!r}; use a folder path, file://, memory:// or s3://."
        )

    @property
    def static_credentials(self) -> bool:
        """True when keys were given (keywords, ``storage_options`` or the URI) and are used as
        they are; False when botocore's provider chain supplies (and refreshes) them."""
        return self.key is not None or self.secret is not None

    def credentials(self) -> tuple[str, str, str | None] | None:
        """The credentials to sign with *now*: ``(key, secret, token)``, or None if there are none.

        Static keys come back as given. Otherwise botocore's provider chain is asked (once per
        config; refreshable credentials renew themselves shortly before they expire), so a caller
        that asks before each use never holds expired keys."""
        if self.protocol != "s3":
            return None
        if self.static_credentials:
            return self.key or "", self.secret or "", self.token
        if not self._chain:
            self._chain.append(_chain_credentials(self.profile))
        chain = self._chain[0]
        if chain is None:
            return None
        frozen = chain.get_frozen_credentials()
        return frozen.access_key, frozen.secret_key, frozen.token

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
            # Static keys as given; otherwise s3fs' own botocore session walks the provider chain
            # (with the named profile) and refreshes temporary credentials before they expire.
            return s3fs.S3FileSystem(
                key=self.key,
                secret=self.secret,
                token=self.token,
                profile=None if self.static_credentials else self.profile,
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
        """``storage_options`` for Polars' native object-store reader (S3 only).

        They hold keys only when keys were given; credentials from the provider chain come from
        :meth:`polars_credential_provider`, which Polars asks again before they expire:
        ``pl.scan_parquet(url, storage_options=c.polars_storage_options(),
        credential_provider=c.polars_credential_provider())``.
        """
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

    def polars_credential_provider(self) -> Any:
        """Polars' ``credential_provider=`` for this root: None with static keys (they are in
        :meth:`polars_storage_options`) or off S3; otherwise ``pl.CredentialProviderAWS`` for the
        profile when boto3 is installed, else a function over the same botocore chain. Either
        one is asked again whenever the credentials it returned are about to expire."""
        if self.protocol != "s3" or self.static_credentials:
            return None
        import importlib.util

        import polars as pl

        if importlib.util.find_spec("boto3") is not None:
            return pl.CredentialProviderAWS(profile_name=self.profile, region_name=self.region)
        return self._polars_chain_provider

    def _polars_chain_provider(self) -> tuple[dict[str, str | None], int | None]:
        """Polars' credential-function protocol: (options, expiry in epoch seconds or None)."""
        current = self.credentials()
        if current is None:
            raise CredentialsError(f"No AWS credentials for {self.uri}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                                   "use a profile (profile= or AWS_PROFILE), or s3://KEY:SECRET@bucket/prefix.")
        key, secret, token = current
        expiry = getattr(self._chain[0], "_expiry_time", None) if self._chain else None
        # Ask again a little before botocore would refresh, never later than the expiry.
        expires = int(expiry.timestamp()) - 60 if expiry is not None else None
        return {"aws_access_key_id": key, "aws_secret_access_key": secret, "aws_session_token": token}, expires
