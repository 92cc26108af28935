"""S3 options as deltalake and Polars take them (profile=, token=, storage_options=), one
StorageConfig for s3fs, Polars and DuckDB, and S3 errors that say what to do."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import polars as pl
import pytest

import ecanalytics as ec
from ecanalytics.analytics.engine import httpfs_secret_sql
from ecanalytics.cli import main
from ecanalytics.storage import StorageConfig
from tests.conftest import BUCKET


def no_env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata lookups off EC2


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_storage_options_are_polars_keys_and_round_trip() -> None:
    options = {"aws_access_key_id": "AK", "aws_secret_access_key": "S/K+", "aws_session_token": "TOK",
               "aws_region": "eu-west-1", "aws_endpoint_url": "http://127.0.0.1:9000"}
    config = StorageConfig.from_uri("s3://bucket/prefix", storage_options=options)
    assert (config.key, config.secret, config.token, config.region, config.endpoint_url) == (
        "AK", "S/K+", "TOK", "eu-west-1", "http://127.0.0.1:9000")
    # The same dict comes back for Polars, and the same credentials go to DuckDB and s3fs.
    polars_options = config.polars_storage_options()
    assert polars_options == {**options, "aws_allow_http": "true"}
    assert StorageConfig.from_uri("s3://bucket/prefix", storage_options=polars_options) == config
    secret = httpfs_secret_sql(config)
    assert "KEY_ID 'AK'" in secret and "SECRET 'S/K+'" in secret and "SESSION_TOKEN 'TOK'" in secret
    fs = config.filesystem()
    assert (fs.key, fs.secret, fs.token) == ("AK", "S/K+", "TOK")
    assert "S/K+" not in repr(config) and "TOK" not in repr(config)


def test_token_and_explicit_options() -> None:
    config = StorageConfig.from_uri("s3://AK:SK@bucket/p", token="TOK")
    assert (config.key, config.secret, config.token) == ("AK", "SK", "TOK")
    assert config.polars_storage_options()["aws_session_token"] == "TOK"  # type: ignore[index]
    # The environment's session token belongs to the environment's keys, not to the URI's.
    assert StorageConfig.from_uri("s3://AK:SK@bucket/p").token is None


def test_bad_storage_options() -> None:
    with pytest.raises(ec.ConfigurationError, match=r"Unknown storage option 'aws_secret'.*aws_secret_access_key"):
        StorageConfig.from_uri("s3://b/p", storage_options={"aws_secret": "x"})
    with pytest.raises(ec.ConfigurationError, match="disagree"):
        StorageConfig.from_uri("s3://b/p", key="A", storage_options={"aws_access_key_id": "B"})
    with pytest.raises(ec.ConfigurationError, match="must be a string"):
        StorageConfig.from_uri("s3://b/p", storage_options={"aws_region": 1})  # type: ignore[dict-item]
    with pytest.raises(ec.ConfigurationError, match="must be a dict"):
        StorageConfig.from_uri("s3://b/p", storage_options=[("aws_region", "x")])  # type: ignore[arg-type]


@pytest.mark.parametrize(("endpoint", "hint"), [("localhost:9000", "'http://localhost:9000'"),
                                                 ("127.0.0.1:9000", "'http://127.0.0.1:9000'"),
                                                 ("s3.example.com", "'https://s3.example.com'")])
def test_endpoint_without_scheme_is_rejected_with_a_hint(endpoint: str, hint: str) -> None:
    with pytest.raises(ec.ConfigurationError, match=f"Did you mean {hint}"):
        StorageConfig.from_uri("s3://b/p", endpoint_url=endpoint)
    with pytest.raises(ec.ConfigurationError, match="Did you mean"):
        ec.connect("s3://b/p", storage_options={"aws_endpoint_url": endpoint})


def test_unreachable_endpoint_is_named_without_the_secret(capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(ec.EndpointUnreachableError) as info:
        ec.connect("s3://AKID:SUPERSECRET@bucket/prefix", endpoint_url=endpoint)
    assert time.monotonic() - started < 10  # not botocore's minute of retries
    message = str(info.value)
    assert endpoint in message and "s3://bucket/prefix" in message and "SUPERSECRET" not in message
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, ec.TransientError)
    assert main(["inspect", "--root", "s3://AKID:SUPERSECRET@bucket/prefix", "--endpoint-url", endpoint,
                 "--output", "json"]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    error = json.loads(line)
    assert error["type"] == "EndpointUnreachableError" and endpoint in error["error"]
    assert "SUPERSECRET" not in line


@pytest.mark.s3
def test_missing_credentials_say_what_to_do(s3: str, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    no_env_credentials(monkeypatch)
    with pytest.raises(ec.CredentialsError) as info:
        ec.connect(f"s3://{BUCKET}/nocreds", endpoint_url=s3)
    message = str(info.value)
    for hint in ("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY", "profile", "s3://KEY:SECRET@"):
        assert hint in message
    assert isinstance(info.value, PermissionError) and isinstance(info.value, ec.TerminalError)
    assert main(["inspect", "--root", f"s3://{BUCKET}/nocreds", "--endpoint-url", s3]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: No AWS credentials") and "Traceback" not in err


@pytest.mark.s3
def test_profile_and_storage_options_reach_every_engine(s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_env_credentials(monkeypatch)
    (tmp_path / "credentials").write_text("[ecprof]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    (tmp_path / "config").write_text("[profile ecprof]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):  # botocore: the environment's region beats the profile's
        monkeypatch.delenv(name)
    uri = f"s3://{BUCKET}/profiled"
    with ec.connect(uri, endpoint_url=s3, profile="ecprof") as db:
        # The profile's credentials are not frozen into the config: the chain is asked when they are needed.
        assert (db.config.key, db.config.region, db.config.profile) == (None, "eu-west-1", "ecprof")
        assert db.config.credentials() == ("testing", "testing", None)
        db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
        wallets = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
        wallets.add("w1", 5)
        db.consolidate()
        # Polars reads with the same credentials through its own object store...
        options = db.config.polars_storage_options()
        assert options is not None and "aws_access_key_id" not in options
        provider = db.config.polars_credential_provider()
        assert isinstance(provider, pl.CredentialProviderAWS)
        key = db.store.find("wallets_transactions_balance", ".parquet")[0]
        assert pl.read_parquet(db.store.url(key), storage_options=options,
                               credential_provider=provider)["value"].to_list() == [5.0]
        assert db.sql("SELECT sum(value) FROM wallets_transactions_balance").fetchall() == [(5.0,)]  # ...and DuckDB
    # The same root through storage_options alone, and through the profile's name in it.
    with ec.connect(uri, create=False, storage_options={"aws_profile": "ecprof", "aws_endpoint_url": s3}) as db:
        assert db.resources["wallets"].get("w1")["balance"] == 5  # type: ignore[union-attr]
    options = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_endpoint_url": s3,
               "aws_region": "us-east-1"}
    with ec.connect(uri, create=False, storage_options=options) as db:
        assert db.resources["wallets"].get("w1")["balance"] == 5  # type: ignore[union-attr]
    with pytest.raises(ec.CredentialsError, match="'nope' does not exist"):
        ec.connect(uri, endpoint_url=s3, profile="nope")


def test_connect_options_are_documented() -> None:
    """The README's API table names the new keywords."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for word in ("profile=", "token=", "storage_options="):
        assert word in readme
