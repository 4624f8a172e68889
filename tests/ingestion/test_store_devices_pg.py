"""The devices of the store on PostgreSQL: a loose index scan, not a scan of every row kept."""

from __future__ import annotations

import pandas as pd

from fleetscore.ingestion.store import _LOOSE_DEVICES, SensorStore
from tests.scoring.fleet import fleet_windows, store_windows


def test_devices_on_postgresql_seek_along_the_primary_key(postgres_url: str) -> None:
    store = SensorStore(postgres_url)
    store.create_schema()
    assert store.devices() == []
    store_windows(postgres_url, pd.concat([fleet_windows(12, 2, 30), fleet_windows(3, 1, 5, seed=3).assign(
        device=lambda f: "z" + f["device"])]))
    assert store.devices() == sorted([str(d) for d in range(1, 13)] + ["z1", "z2", "z3"])
    import psycopg

    dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        conn.execute("ANALYZE windows")
        conn.execute("SET enable_seqscan = off")  # what the planner does on a big table
        plan = "\n".join(r[0] for r in conn.execute(
            f"EXPLAIN WITH RECURSIVE d(device) AS ({_LOOSE_DEVICES}) "  # the query devices() runs
            "SELECT device FROM d WHERE device IS NOT NULL").fetchall())
    assert "Index Only Scan" in plan and "Seq Scan" not in plan, plan
