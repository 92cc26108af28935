"""The CLI as a batch job would use it: exit codes, JSON summaries, no credentials in output."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading

import polars as pl
import pytest
from click.testing import CliRunner

import ecanalytics as ec
from ecanalytics.cli import ObjectProgress, cli, main
from tests.conftest import Root


def env_for(root: Root) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": root.endpoint_url} if root.endpoint_url else {}


def seed(root: Root) -> ec.Database:
    db = root.connect()
    for f in ("balance", "points"):
        db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field=f, auto_consolidate=False))
    w = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0", "points": "number|default:0"})
    for i in range(6):
        w.add(f"w{i % 3}", "balance", i + 1)
    w.add("w0", "points", 5)
    return db


def test_inspect_reports_an_unreadable_pending_object_and_the_other_fields(root: Root) -> None:
    """A pending object that is not Parquet: ``inspect`` names it for its field, still reports
    the other field, and exits 1."""
    db = seed(root)
    w = db.resources["wallets"]
    assert isinstance(w, ec.Resource)
    points = w.plugins["points"].consolidator
    bad = sorted(points.scan(w.ledger.state()).pending)[0]
    db.store.write(bad, b"not parquet")
    res = CliRunner().invoke(cli, ["inspect", "--root", root.uri, "--output", "json"], env=env_for(root))
    assert res.exit_code == 1, res.output
    out = res.stdout
    fields = {f["field"]: f for f in json.loads(out[out.index("{"):])["fields"]}
    assert fields["points"]["unreadable"] == db.store.url(bad) and "pending" not in fields["points"]
    assert fields["balance"]["pending"] == 6
    assert f"error: wallets.points: {db.store.url(bad)} is not a readable Parquet file" in res.stderr


def test_consolidate_inspect_recalculate(root: Root) -> None:
    db = seed(root)
    runner = CliRunner()
    res = runner.invoke(cli, ["inspect", "--root", root.uri, "--output", "json"], env=env_for(root))
    assert res.exit_code == 0, res.output
    fields = {f["field"]: f for f in json.loads(res.output)["fields"]}
    assert (fields["balance"]["pending"], fields["points"]["pending"]) == (6, 1)
    assert fields["balance"]["objects"] == 6 and fields["balance"]["bytes"] > 0

    res = runner.invoke(cli, ["consolidate", "--root", root.uri, "--output", "json"], env=env_for(root))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert (summary["transactions"], summary["versions"], summary["records"]) == (7, 2, 3 + 1)
    assert db.resources["wallets"].get("w0")["balance"] == 1 + 4  # type: ignore[union-attr]
    res = runner.invoke(cli, ["inspect", "--root", root.uri, "--output", "json"], env=env_for(root))
    assert [f["pending"] for f in json.loads(res.output)["fields"]] == [0, 0]

    import polars as pl

    from ecanalytics.ledger import Commit

    w = db.resources["wallets"]
    assert isinstance(w, ec.Resource)
    w.ledger.commit(lambda st: Commit("update", upserts=st.records.filter(pl.col("id") == "w1").with_columns(balance=pl.lit(0.0))))
    res = runner.invoke(cli, ["recalculate", "--root", root.uri, "--resource", "wallets", "--field", "balance",
                              "--output", "json"], env=env_for(root))
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["changed"] == 1
    assert w.get("w1")["balance"] == 2 + 5


def test_exit_codes_and_one_line_errors(tmp_path: object) -> None:
    assert main(["consolidate", "--no-such-flag"]) == 2
    assert main(["recalculate", "--root", str(tmp_path), "--resource", "nope"]) == 1  # no catalog there
    with ec.connect(str(tmp_path)) as db:
        db.create_resource("other", {"id": "string|required", "n": "number|default:0"})
    assert main(["recalculate", "--root", str(tmp_path), "--resource", "nope"]) == 1
    out = subprocess.run([sys.executable, "-m", "ecanalytics.cli", "recalculate", "--root", str(tmp_path),
                          "--resource", "nope"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr and "nope" in out.stderr


@pytest.mark.s3
def test_credentials_never_printed(s3_root: Root) -> None:
    seed(s3_root).close()
    uri = s3_root.uri.replace("s3://", "s3://testing:SUPERSECRETKEY@")
    for args in (["inspect", "--output", "json"], ["consolidate"], ["consolidate", "--output", "json"],
                 ["sql", "run", "pending_backlog", "--output", "csv"]):
        res = CliRunner().invoke(cli, [*args, "--root", uri], env=env_for(s3_root))
        assert res.exit_code == 0, res.output
        assert "SUPERSECRETKEY" not in res.output
    bad = CliRunner().invoke(cli, ["consolidate", "--root", uri.replace("ec-test", "no-such-bucket")], env=env_for(s3_root))
    assert "SUPERSECRETKEY" not in bad.output


def test_demo_job(root: Root) -> None:
    env = env_for(root)
    res = CliRunner().invoke(cli, ["demo", "--root", root.uri, "--records", "8", "--transactions", "120",
                                   "--output", "json"], env=env)
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["written"] == 120 and report["applied"] == 120
    assert sum(c["transactionCount"] for c in report["cohorts"]) == sum(
        r["transactions"] for r in report["consolidations"] if r["field"] == "balance")
    db = root.connect()
    wallets = db.resources["wallets"]
    values = {r["id"]: r["balance"] for r in report["values"]}
    assert values == dict(zip(wallets.to_polars()["id"].to_list(), wallets.to_polars()["balance"].to_list(), strict=True))  # type: ignore[union-attr]
    assert ec.reports.run(db, "reconciliation").height == 0  # consolidated in one pass: event order holds
    text = CliRunner().invoke(cli, ["demo", "--root", root.uri, "--records", "8", "--transactions", "10"], env=env)
    assert text.exit_code == 0 and "Wallets (top 10 by balance)" in text.output


def test_the_read_progress_counts_every_object_read_from_many_threads() -> None:
    # A consolidation reports its reads from its read-ahead threads; none may be lost. Log
    # entries (JSON) read in the same way are not transaction objects and do not count.
    buffer = io.BytesIO()
    pl.DataFrame({"a": list(range(7))}).write_parquet(buffer)
    blob = buffer.getvalue()
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to expose a lost update
    try:
        progress = ObjectProgress(ec.connect("memory://progress").store, "reading", enabled=False)
        threads = [threading.Thread(target=lambda: [progress._read({"k.parquet": blob, "gone.parquet": None, "w/_log/1.json": b"{}"}) for _ in range(500)])
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(before)
    assert (progress.objects, progress.rows) == (8 * 500, 8 * 500 * 7)
