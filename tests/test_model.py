"""Randomized model test: random set/add/sub over many records and two fields, random consolidation
points, batching on and off, retries with idempotency keys, and backfills dated before what was
already consolidated; every value must equal the event-order model's, and afterwards the
reconciliation (recalculate, events_until) finds nothing to change."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

import ecanalytics as ec
from tests.conftest import Root
from tests.model import LedgerModel, Tx

FIELDS = ("balance", "points")
DEFAULTS = {"balance": 0.0, "points": 10.0}


@pytest.mark.parametrize("batch", [False, True], ids=["unbatched", "batched"])
@pytest.mark.parametrize("seed", [1, 2])
def test_random_operations_match_the_model(root: Root, seed: int, batch: bool) -> None:
    rng = random.Random(seed)
    db = root.connect(checkpoint_interval=3)  # small, so checkpoints are exercised too
    for f in FIELDS:
        db.use_plugin(ec.EventualConsistencyPlugin(resource="accounts", field=f, auto_consolidate=False,
                                                   batch_transactions=batch, batch_size=rng.randint(2, 9),
                                                   flush_interval=3600, cohort={"timezone": "Europe/Berlin"}))
    accounts = db.create_resource("accounts", {"id": "string|required", "balance": "number|default:0",
                                               "points": "number|default:10"})
    model = LedgerModel(dict(DEFAULTS))
    t0 = datetime(2026, 10, 20, tzinfo=timezone.utc)
    records = [f"acc-{i}" for i in range(25)]
    written: list[Tx] = []
    for step in range(180):
        roll = rng.random()
        if roll < 0.08:
            f = rng.choice(FIELDS)
            accounts.plugin(f).consolidate()
            model.consolidate(f)
        elif roll < 0.12 and written:
            old = rng.choice(written)  # a retry of an earlier call, same key
            getattr(accounts, old.op)(old.record, old.field, old.value, id=old.key, timestamp=old.ts)
            model.write(old)
        elif roll < 0.15:
            rid, f = rng.choice(records), rng.choice(FIELDS)
            # a record that does not exist counts as the field's default
            assert accounts.value(rid, f) == model_preview(model, rid, f)
        else:
            op = rng.choices(["add", "sub", "set"], weights=[5, 3, 1])[0]
            # Coarse timestamps on purpose: many ties, broken by the key.
            # Coarse timestamps spread over 3 days, so most writes land before what was already
            # consolidated (backfills); one in eight goes a month back, before every earlier set.
            hours = rng.randrange(0, 72) if rng.random() > 0.125 else -rng.randrange(24, 24 * 30)
            tx = Tx(f"k{step:04d}-{rng.randrange(10**6)}", rng.choice(records), rng.choice(FIELDS), op,
                    float(rng.randrange(-50, 500)), t0 + timedelta(hours=hours))
            getattr(accounts, op)(tx.record, tx.field, tx.value, id=tx.key, timestamp=tx.ts)
            model.write(tx)
            written.append(tx)
    for f in FIELDS:
        accounts.plugin(f).consolidate()
        model.consolidate(f)
    table = accounts.to_polars()
    for f in FIELDS:
        got = dict(zip(table["id"].to_list(), table[f].to_list(), strict=True))
        expected = model.table(f)
        for rid in expected:
            assert got[rid] == expected[rid], (f, rid)
        # records that only ever had the other field keep this field's default
        assert all(got[rid] == DEFAULTS[f] for rid in got if rid not in expected)
    assert set(table["id"].to_list()) == {rid for (rid, _f) in model.values}

    # A fresh connection (new process state, checkpoint + log replay) sees the same values.
    again = root.connect().resources["accounts"].to_polars()  # type: ignore[union-attr]
    assert again.equals(table)
    # The reconciliation agrees with consolidation after any interleaving of backfills.
    assert accounts.to_polars(events_until=datetime.now(timezone.utc)).equals(table)
    for f in FIELDS:
        assert accounts.recalculate(field=f).changed == 0


def model_preview(model: LedgerModel, rid: str, fld: str) -> float:
    """What the model would hold for (rid, fld) if ``fld`` were consolidated now."""
    clone = model.copy()
    clone.consolidate(fld)
    return clone.value(rid, fld)
