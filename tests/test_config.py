"""Root URIs: credentials in the URI (secrets may contain '/' and '+'), env fallbacks, errors."""

from __future__ import annotations

import pytest

import ecanalytics as ec
from ecanalytics.storage import StorageConfig


@pytest.mark.parametrize(("uri", "root", "key", "secret"), [
    ("s3://AKIAEXAMPLE:abc/def+ghi@my-bucket/some/prefix", "my-bucket/some/prefix", "AKIAEXAMPLE", "abc/def+ghi"),
    ("s3://AKIAEXAMPLE:abc%2Fdef%2Bghi@my-bucket/p", "my-bucket/p", "AKIAEXAMPLE", "abc/def+ghi"),
    ("s3://bucket", "bucket", "env-key", "env-secret"),
    ("s3://bucket/a/b/", "bucket/a/b", "env-key", "env-secret"),
])
def test_s3_uris(monkeypatch: pytest.MonkeyPatch, uri: str, root: str, key: str, secret: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    cfg = StorageConfig.from_uri(uri)
    assert (cfg.root, cfg.endpoint_url) == (root, "http://127.0.0.1:1")
    assert cfg.credentials() == (key, secret, None)
    # Keys from the URI are static; the environment's come from botocore's chain, asked when needed.
    assert cfg.static_credentials == (key != "env-key")
    assert secret not in cfg.uri and secret not in repr(cfg)  # never printed
    assert StorageConfig.from_uri(uri, endpoint_url="http://x:9", key="k2").key == "k2"


def test_other_roots(tmp_path: object) -> None:
    assert StorageConfig.from_uri(f"file://{tmp_path}").root == str(tmp_path)
    assert StorageConfig.from_uri("memory://nb").root == "/nb"
    for bad in ("", "ftp://x/y", "memory://", "s3:///prefix"):
        with pytest.raises(ec.ConfigurationError):
            StorageConfig.from_uri(bad)
