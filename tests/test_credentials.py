"""Credentials from botocore's provider chain, refreshed under a long-running job, and logs that
never show a secret."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import requests
from click.testing import CliRunner

import ecanalytics as ec
from ecanalytics import cli as cli_module
from ecanalytics.cli import cli, main
from ecanalytics.redaction import MASK, RedactingFilter, redact
from tests.conftest import BUCKET

pytestmark = pytest.mark.s3

KEY_ID = "ASIAZZZZ7EXAMPLE2345"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSECRETKEY"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLEsessionTOKENvalue/with+slashes=="


def _session_client(service: str, endpoint: str, key: tuple[str, str]) -> Any:
    import boto3

    return boto3.session.Session(aws_access_key_id=key[0], aws_secret_access_key=key[1],
                                 region_name="us-east-1").client(service, endpoint_url=endpoint)


@pytest.fixture
def enforced_auth(s3: str) -> Iterator[str]:
    """moto checking every request's key and signature against its IAM users (the first requests,
    which set the user up, are not checked); back to no checks afterwards."""
    yield s3
    requests.post(f"{s3}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()


def test_a_long_consolidate_survives_a_key_rotation(enforced_auth: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A profile whose ``credential_process`` hands out keys that live 11 minutes: inside
    botocore's 15-minute refresh window, so the chain asks again before every request. Halfway
    through ``consolidate --watch`` the key is replaced and the old one deleted in IAM: the same
    process goes on with the new key (frozen keys would fail with InvalidAccessKeyId)."""
    s3 = enforced_auth
    iam = _session_client("iam", s3, ("testing", "testing"))
    iam.create_user(UserName="consolidator")
    iam.put_user_policy(UserName="consolidator", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))

    def new_key() -> tuple[str, str]:
        made = iam.create_access_key(UserName="consolidator")["AccessKey"]
        return made["AccessKeyId"], made["SecretAccessKey"]

    creds = tmp_path / "creds.json"

    def hand_out(key: tuple[str, str]) -> None:
        expires = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=11)).strftime("%Y-%m-%dT%H:%M:%SZ")
        creds.write_text(json.dumps({"Version": 1, "AccessKeyId": key[0], "SecretAccessKey": key[1],
                                     "Expiration": expires}))

    first = new_key()
    hand_out(first)
    (tmp_path / "config").write_text(f"[profile rotating]\ncredential_process = /bin/cat {creds}\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "rotating")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    iam = _session_client("iam", s3, first)
    requests.post(f"{s3}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()

    uri = f"s3://{BUCKET}/rotating"
    db = ec.connect(uri, endpoint_url=s3)
    assert not db.config.static_credentials and db.config.credentials() == (*first, None)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    wallets = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    wallets.add("w1", 5)
    assert db.sql("SELECT count(*) FROM wallets_transactions_balance").fetchall() == [(1,)]
    rotated: list[tuple[str, str]] = []

    def rotate(_seconds: float) -> None:  # the --watch loop's sleep: rotate, then write more
        second = new_key()
        hand_out(second)
        iam.delete_access_key(UserName="consolidator", AccessKeyId=first[0])
        rotated.append(second)
        wallets.add("w1", 7)  # this connection, opened before the rotation, writes with the new key

    monkeypatch.setattr(cli_module, "_sleep", rotate)
    res = CliRunner().invoke(cli, ["consolidate", "--root", uri, "--endpoint-url", s3, "--watch", "--max-runs", "2",
                                   "--heartbeat", "0", "--output", "json"])
    assert res.exit_code == 0, res.output
    runs = [json.loads(line) for line in res.output.splitlines()]
    assert [(r["run"], r["transactions"], r["exitCode"]) for r in runs] == [(1, 1, 0), (2, 1, 0)]
    with pytest.raises(Exception, match="InvalidAccessKeyId"):  # the first key is really gone
        _session_client("s3", s3, first).list_objects_v2(Bucket=BUCKET)

    # The connection opened before the rotation reads with the new key: records, DuckDB, Polars.
    assert db.config.credentials() == (*rotated[0], None)
    assert wallets.get("w1")["balance"] == 12
    assert db.sql("SELECT sum(value) FROM wallets_transactions_balance").fetchall() == [(12.0,)]
    objects = db.store.find("wallets_transactions_balance", ".parquet")
    provider = db.config.polars_credential_provider()
    assert isinstance(provider, pl.CredentialProviderAWS)
    values = pl.concat([pl.read_parquet(db.store.url(k), storage_options=db.config.polars_storage_options(),
                                        credential_provider=provider) for k in objects])
    assert sorted(values["value"].to_list()) == [5.0, 7.0]
    db.close()


def test_static_keys_stay_static_and_the_chain_has_a_botocore_provider(s3: str) -> None:
    static = ec.connect(f"s3://{BUCKET}/static", endpoint_url=s3, key="testing", secret="testing", token="tok")
    assert static.config.static_credentials and static.config.credentials() == ("testing", "testing", "tok")
    assert static.config.polars_credential_provider() is None
    options = static.config.polars_storage_options()
    assert options is not None and options["aws_session_token"] == "tok"
    static.close()
    chained = ec.connect(f"s3://{BUCKET}/chained", endpoint_url=s3)
    # Without boto3, Polars gets a function over the same botocore chain, with its expiry.
    got, expires = chained.config._polars_chain_provider()
    assert (got["aws_access_key_id"], got["aws_secret_access_key"], expires) == ("testing", "testing", None)
    chained.close()


def test_redact_masks_every_kind_of_aws_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    samples = [
        f"headers={{'X-Amz-Security-Token': b'{TOKEN}', 'Authorization': b'AWS4-HMAC-SHA256 Credential={KEY_ID}/20261205/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=abc'}}",
        f"GET /b?X-Amz-Credential={KEY_ID}%2F2026&X-Amz-Security-Token={TOKEN.replace('/', '%2F')}&x=1",
        f"aws_session_token={TOKEN} aws_secret_access_key = {SECRET}",
        f'{{"SessionToken": "{TOKEN}", "SecretAccessKey": "{SECRET}", "AccessKeyId": "{KEY_ID}"}}',
        f"s3://{KEY_ID}:{SECRET}@bucket/prefix",
        f"plain token in a message: {TOKEN}",
    ]
    for sample in samples:
        cleaned = redact(sample)
        assert MASK in cleaned, cleaned
        for secret in (KEY_ID, SECRET, TOKEN, TOKEN.replace("/", "%2F"), "wJalrXUtnFEMI"):
            assert secret not in cleaned, (sample, cleaned)
    assert redact("nothing secret: 81,942.5 on 2026-11-27") == "nothing secret: 81,942.5 on 2026-11-27"
    record = logging.LogRecord("botocore.endpoint", logging.DEBUG, __file__, 1, "token %s key %s", (TOKEN, KEY_ID), None)
    assert RedactingFilter().filter(record) and TOKEN not in record.getMessage() and "ASIA" + MASK in record.getMessage()


def test_debug_logs_show_no_key_secret_or_session_token(s3: str, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``--log-level debug`` is ecanalytics' own loggers only; botocore's request dumps come only
    when named, and even then the handler masks the key id, the secret and the session token."""
    with ec.connect(f"s3://{BUCKET}/logged", endpoint_url=s3) as db:
        db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    base = ["inspect", "--root", f"s3://{BUCKET}/logged", "--endpoint-url", s3]
    assert main(["--log-level", "debug", *base]) == 0
    err = capsys.readouterr().err
    assert " DEBUG botocore" not in err and " DEBUG s3fs" not in err  # other libraries stay at WARNING
    assert main(["--log-level", "debug", *base, "--log-level", "botocore=debug"]) == 0
    err = capsys.readouterr().err
    assert " DEBUG botocore" in err and "X-Amz-Security-Token" in err and "Authorization" in err  # dumps are there
    for secret in (KEY_ID, SECRET, TOKEN, KEY_ID[4:]):
        assert secret not in err
    assert main(["--log-level", "botocore=loud", *base]) == 2  # a bad level is a usage error
