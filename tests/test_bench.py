"""`pgfleet bench --quick` runs end to end and writes its report (a smoke test: no timing is asserted)."""

import json
from pathlib import Path

from conftest import pgfleet_cli


def test_bench_quick_writes_table_json_and_chart(tmp_path: Path) -> None:
    proc = pgfleet_cli("bench", "--quick", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    names = [r["workload"] for r in report["results"]]
    for expected in ("point lookup, 4 clients, simple", "point lookup, 1 client, latency", "count(*) over all rows",
                     "GROUP BY non-key column with sum()", "fetch every row (COPY out)", "COPY 20,000 rows",
                     "pgbench TPC-B-like, 4 clients"):
        assert expected in names
    for r in report["results"]:
        assert r["baseline"] and r["fleet"], r["workload"]
        assert all(v > 0 for v in r["baseline"] + r["fleet"] + r["fast"])
    assert report["growth"]["worker_connections"]["10"]["w1"] >= 10
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert "fleet / single server" in proc.stdout
