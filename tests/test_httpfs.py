"""DuckDB's native httpfs path, end to end against the moto server.

DuckDB 2.x cannot fetch httpfs here, but the PyPI package ``duckdb-ext-httpfs`` ships it for
duckdb 1.4.4. ``.ci/run`` builds a side interpreter with those two (and the main venv's other
packages) and points ``EC_HTTPFS_PYTHON`` at it; this test then runs the same library there with
``ECANALYTICS_DUCKDB_S3=httpfs``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import ecanalytics as ec
from tests.conftest import Root

SIDE_PYTHON = os.environ.get("EC_HTTPFS_PYTHON")
SCRIPT = """
import json, os, sys
import duckdb, ecanalytics as ec
db = ec.connect(sys.argv[1], endpoint_url=sys.argv[2])
plugin = db.resources["wallets"].plugins["balance"]
out = {
    "duckdb": duckdb.__version__,
    "path": db._engine().path,
    "day": db.sql("SELECT count(*), sum(value) FROM wallets_transactions_balance WHERE cohortDate = '2026-11-22'").fetchall()[0],
    "applied": db.sql("SELECT count(*) FROM ec_transactions WHERE applied").fetchall()[0][0],
    "records": db.sql("SELECT id, balance FROM wallets ORDER BY id").fetchall(),
    "stats": plugin.get_cohort_stats("2026-11-23"),
}
print(json.dumps(out))
"""


@pytest.mark.s3
@pytest.mark.skipif(not SIDE_PYTHON, reason="EC_HTTPFS_PYTHON is not set (.ci/run sets it up); DuckDB 2.x has no offline httpfs")
def test_native_httpfs_path_reads_the_same_objects(s3_root: Root) -> None:
    import datetime as dt

    db = s3_root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    w = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    for i in range(5):
        w.add("a" if i % 2 else "b", i + 1, timestamp=dt.datetime(2026, 11, 20 + i, 12, tzinfo=dt.UTC))
    w.plugin().consolidate()
    w.add("a", 100, timestamp=dt.datetime(2026, 11, 22, 13, tzinfo=dt.UTC))  # pending
    env = {**os.environ, "ECANALYTICS_DUCKDB_S3": "httpfs", "PYTHONPATH": str(Path(__file__).parent.parent)}
    assert SIDE_PYTHON is not None
    proc = subprocess.run([SIDE_PYTHON, "-c", SCRIPT, s3_root.uri, s3_root.endpoint_url or ""], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["path"] == "httpfs" and out["duckdb"].startswith("1.")
    assert out["day"] == [2, 103.0]  # the 3.0 of Nov 22 plus the pending 100
    assert out["applied"] == 5
    assert out["records"] == [["a", 6.0], ["b", 9.0]]
    assert out["stats"] == {"date": "2026-11-23", "transactionCount": 1, "byOperation": {"set": 0, "add": 1, "sub": 0},
                            "totalValue": 4.0}
