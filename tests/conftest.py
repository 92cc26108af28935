"""Shared fixtures: one moto S3 server per session (real HTTP on 127.0.0.1), reset per test, and a
``root`` fixture parametrised over local disk, ``memory://`` and S3."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Before anything imports botocore: fake credentials, and never a real AWS profile.
os.environ.update({
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
})
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_ENDPOINT_URL", None)

import ecanalytics as ec

if os.environ.get("PYTEST_XDIST_WORKER"):
    # xdist workers inherit COLUMNS=80 from execnet, which no user's pipe has: CLI output would
    # wrap at 80 in the parallel run only. Tests that want a width set COLUMNS themselves.
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)

BUCKET = "ec-test"
DEFAULT_WORKERS = 2


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Run on two xdist workers unless told otherwise.

    ``-n 2`` in ``addopts`` would break ``pytest -p no:xdist`` (``unrecognized arguments: -n``), so
    the default lives here: it applies only when xdist is loaded, this is not a worker, and the
    command line gave no ``-n``. Runs before xdist's own hook, which turns the count into workers.
    """
    if not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput"):
        return
    if getattr(config.option, "numprocesses", None) is None and not config.getoption("usepdb", False):
        config.option.numprocesses = DEFAULT_WORKERS


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real moto S3 server on 127.0.0.1 (port chosen by the OS)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def s3(moto_endpoint: str) -> Iterator[str]:
    """Reset moto and create the test bucket; yields the endpoint."""
    import requests

    requests.post(f"{moto_endpoint}/moto-api/reset", timeout=10).raise_for_status()
    _s3_client(moto_endpoint).create_bucket(Bucket=BUCKET)
    yield moto_endpoint


@dataclass
class Root:
    """A database root under test: ``uri`` plus what ``connect`` needs to reach it."""

    kind: str
    uri: str
    endpoint_url: str | None = None
    opened: list[ec.Database] = field(default_factory=list)

    def connect(self, **kwargs: Any) -> ec.Database:
        db = ec.connect(self.uri, endpoint_url=self.endpoint_url, **kwargs)
        self.opened.append(db)
        return db

    def store(self) -> Any:
        from ecanalytics.storage import StorageConfig, Store

        return Store(StorageConfig.from_uri(self.uri, endpoint_url=self.endpoint_url))


def _make_root(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Root:
    if kind == "local":
        return Root("local", str(tmp_path / "ec-data"))
    if kind == "memory":
        return Root("memory", f"memory://test-{uuid.uuid4().hex}")
    endpoint = request.getfixturevalue("s3")
    return Root("s3", f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}", endpoint_url=endpoint)


@pytest.fixture(params=["local", "memory", pytest.param("s3", marks=pytest.mark.s3)])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Root]:
    """A fresh, empty database root on each storage backend."""
    r = _make_root(request.param, tmp_path, request)
    yield r
    for db in r.opened:
        db.close()


@pytest.fixture
def s3_root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Root]:
    """A fresh root on the moto S3 server only."""
    r = _make_root("s3", tmp_path, request)
    yield r
    for db in r.opened:
        db.close()


WALLETS = {
    "id": "string|required",
    "userId": "string|required",
    "balance": "number|default:0",
    "currency": "string|required",
}
