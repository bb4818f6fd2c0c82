"""`pgfleet bench`: a single plain PostgreSQL server (the baseline) against a fleet (coordinator + 2
workers), on this machine, in the same run, with the same data and server settings.

Each workload runs interleaved — baseline, fleet through the coordinator, fleet fast path, and again —
and the median of the repetitions is reported. Ratios are fleet/baseline: for throughput higher is
better, for times lower is better. The targets are the Citus column of issue 3 (Citus 15 against a
single server on a 2-core machine).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .cluster.fleet import Fleet
from .cluster.local import LocalCluster
from .cluster.loader import load_copy
from .cluster.aggregate import aggregate
from .cluster.router import Router, fanout, load, table_shards
from .cluster.shard_pool import ShardPool
from .execute.connect import Conn, connect
from .spec import DistributeSpec, HashSpec, QualifiedName, parse_range_bounds
from .bench_chart import chart
from .bench_data import ROW_SELECT, generate_into_shards
from .bench_timing import client_loop, copy_out, secs, timed
from .pgbench import run_pgbench

Say = Callable[[str], None]


@dataclass(frozen=True)
class Config:
    rows: int = 2_000_000
    shards: int = 8
    duration: float = 4.0  # seconds per pgbench / client-loop run
    reps: int = 3
    copy_rows: int = 500_000
    pgbench_scale: int = 10
    shard_counts: tuple[int, ...] = (8, 32, 128)
    count_sizes: tuple[int, ...] = (1_000_000, 4_000_000, 16_000_000)
    client_counts: tuple[int, ...] = (10, 100)


QUICK = Config(rows=100_000, duration=1.0, reps=1, copy_rows=20_000, pgbench_scale=1, shard_counts=(8, 32),
               count_sizes=(50_000, 200_000), client_counts=(10,))


@dataclass
class Result:
    workload: str
    unit: str  # "tps" (higher is better) or "s"/"ms" (lower is better)
    target: float | None  # Citus ratio from issue 3
    target_text: str
    baseline: list[float] = field(default_factory=list)
    fleet: list[float] = field(default_factory=list)
    fast: list[float] = field(default_factory=list)
    fast_baseline: list[float] = field(default_factory=list)  # same client code on the single server
    fast_path: str = ""
    note: str = ""

    @property
    def higher_is_better(self) -> bool:
        return self.unit == "tps"

    @staticmethod
    def _median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    def ratio(self, which: str) -> float | None:
        base = self._median(self.fast_baseline if which == "fast" and self.fast_baseline else self.baseline)
        other = self._median(self.fleet if which == "fleet" else self.fast)
        if base is None or other is None or base == 0:
            return None
        return other / base

    def met(self, which: str) -> bool | None:
        r = self.ratio(which)
        if r is None or self.target is None:
            return None
        return r >= self.target if self.higher_is_better else r <= self.target

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "baseline_median": self._median(self.baseline),
                "fast_baseline_median": self._median(self.fast_baseline),
                "fleet_median": self._median(self.fleet), "fast_median": self._median(self.fast),
                "fleet_ratio": self.ratio("fleet"), "fast_ratio": self.ratio("fast"),
                "fleet_met": self.met("fleet"), "fast_met": self.met("fast")}


# --- helpers -------------------------------------------------------------------------------------------
# --- the run -------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, cfg: Config, workdir: Path, say: Say) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.say = say
        self.results: list[Result] = []
        self.extra: dict[str, Any] = {}

    def setup(self) -> None:
        self.say("starting a single server (baseline) and a fleet (coordinator + 2 workers)")
        self.base = LocalCluster.create(self.workdir / "single", workers=0, fast=True)
        self.fleet_local = LocalCluster.create(self.workdir / "fleet", workers=2, fast=True)
        self.fleet = Fleet(self.fleet_local.endpoint("coord"), self.fleet_local)
        self.fleet.register_local_workers()
        self.pool = ShardPool(self.fleet)  # an application keeps one, like a connection pool
        self.b: Conn = connect(self.base.endpoint("coord"))
        self.f: Conn = self.fleet.conn()
        n = self.cfg.rows
        self.say(f"loading t ({n:,} rows) into both")
        create = "CREATE TABLE t (id bigint PRIMARY KEY, grp int, val int, pad text)"
        self.b.execute(create)
        self.b.execute(("INSERT INTO t " + ROW_SELECT.format(n=n)).encode())
        self.b.execute("VACUUM ANALYZE t")
        self.f.execute(create)
        self.fleet.distribute(DistributeSpec(QualifiedName("public", "t"), "id", HashSpec(self.cfg.shards)))
        generate_into_shards(self.fleet, "public.t", ROW_SELECT.format(n=n), self.cfg.shards)
        for conn in (self.b, self.f):
            conn.execute("CREATE TABLE t2 (id bigint PRIMARY KEY, grp int, val int, pad text)")
        self.fleet.distribute(DistributeSpec(QualifiedName("public", "t2"), "id",
                                             colocate_with=QualifiedName("public", "t")))
        self.say(f"pgbench -i -s {self.cfg.pgbench_scale} on both; pgbench_accounts range-distributed (seed 004)")
        for target in (self.base, self.fleet_local):
            run_pgbench(target, "coord", ["-i", "-q", "-s", str(self.cfg.pgbench_scale)])
        accounts = 100_000 * self.cfg.pgbench_scale
        step = accounts // self.cfg.shards
        bounds = ",".join(["min"] + [str(1 + step * i) for i in range(1, self.cfg.shards)] + ["max"])
        self.f.execute("ALTER TABLE pgbench_accounts DROP CONSTRAINT pgbench_accounts_pkey")
        self.f.execute("ALTER TABLE pgbench_accounts ADD PRIMARY KEY (aid)")
        self.fleet.distribute(DistributeSpec(QualifiedName("public", "pgbench_accounts"), "aid",
                                             parse_range_bounds(bounds)))
        for conn in (self.b, self.f):
            conn.execute("VACUUM ANALYZE")

    def add(self, result: Result) -> Result:
        self.results.append(result)
        return result

    def interleave(self, res: Result, base: Callable[[], float], fleet: Callable[[], float],
                   fast: Callable[[], float] | None = None, fast_base: Callable[[], float] | None = None) -> None:
        for _ in range(self.cfg.reps):
            res.baseline.append(base())
            res.fleet.append(fleet())
            if fast_base is not None:
                res.fast_baseline.append(fast_base())
            if fast is not None:
                res.fast.append(fast())
        self.say(f"  {res.workload}: baseline {statistics.median(res.baseline):.4g} {res.unit}, "
                 f"fleet {statistics.median(res.fleet):.4g}"
                 + (f", fast path {statistics.median(res.fast):.4g}" if res.fast else ""))

    # --- workloads -----------------------------------------------------------------------------------
    def point_lookups(self) -> None:
        n, d = self.cfg.rows, self.cfg.duration
        script = f"\\set id random(1, {n})\nSELECT val FROM t WHERE id = :id;\n"

        def bench(local: LocalCluster, clients: int, mode: str, key: str) -> Callable[[], float]:
            return lambda: run_pgbench(local, "coord", ["-n", "-c", str(clients), "-j", str(min(clients, 2)),
                                                     "-T", secs(d), "-M", mode], script)[key]

        router_ep = self.base.endpoint("coord")

        def base_client(simple: bool = False) -> Callable[[int], object]:
            c = connect(router_ep)
            if simple:  # values bound in the client, one simple-protocol Query message per lookup
                c.cursor_factory = psycopg.ClientCursor
            return lambda k: c.execute("SELECT val FROM t WHERE id = %s", (k,), prepare=not simple).fetchone()

        def fast_client(simple: bool = False) -> Callable[[int], object]:
            r = Router(Fleet(self.fleet_local.endpoint("coord"), self.fleet_local), simple=simple)
            q = sql.SQL("SELECT val FROM {} WHERE id = %s")
            return lambda k: r.fetchone(q, (k,), table="public.t", key=k)

        for mode, target in (("simple", 0.34), ("prepared", 0.22)):
            simple = mode == "simple"
            res = self.add(Result(f"point lookup, 4 clients, {mode}", "tps", target, f"{target}",
                                  fast_path=f"Router{'(simple=True)' if simple else ''}, 4 Python threads; its ratio "
                                            "is against the same Python client on the single server"))
            self.interleave(res, bench(self.base, 4, mode, "tps"), bench(self.fleet_local, 4, mode, "tps"),
                            partial(client_loop, partial(fast_client, simple), 4, d, n),
                            partial(client_loop, partial(base_client, simple), 4, d, n))
        res = self.add(Result("point lookup, 1 client, latency", "ms", 2.4, "2.0–2.4×",
                              fast_path="Router, 1 Python thread; its ratio is against the same Python client on "
                                        "the single server"))
        self.interleave(res, bench(self.base, 1, "prepared", "latency_ms"),
                        bench(self.fleet_local, 1, "prepared", "latency_ms"),
                        lambda: 1000.0 / client_loop(fast_client, 1, d, n),
                        lambda: 1000.0 / client_loop(base_client, 1, d, n))

        upd = f"\\set id random(1, {n})\nUPDATE t SET val = val + 1 WHERE id = :id;\n"
        res = self.add(Result("single-row UPDATE by key, 1 client", "ms", None, "(not in issue table)"))
        one = ["-n", "-c", "1", "-T", secs(d), "-M", "prepared"]
        self.interleave(res, lambda: run_pgbench(self.base, "coord", one, upd)["latency_ms"],
                        lambda: run_pgbench(self.fleet_local, "coord", one, upd)["latency_ms"])

    def scans(self) -> None:
        b, f = self.b, self.f
        res = self.add(Result("count(*) over all rows", "s", 1.5, "1.5×", fast_path="per-shard count on the workers, summed"))
        self.interleave(res, lambda: timed(lambda: b.execute("SELECT count(*) FROM t").fetchone()),
                        lambda: timed(lambda: f.execute("SELECT count(*) FROM t").fetchone()),
                        lambda: timed(lambda: aggregate(self.fleet, "public.t", [("count", None)], pool=self.pool)))
        q = "SELECT grp, sum(val) FROM t GROUP BY grp"
        res = self.add(Result("GROUP BY non-key column with sum()", "s", 1.4, "1.4×",
                              fast_path="per-shard GROUP BY on the workers, combined"))
        self.interleave(res, lambda: timed(lambda: b.execute(q).fetchall()),
                        lambda: timed(lambda: f.execute(q).fetchall()),
                        lambda: timed(lambda: aggregate(self.fleet, "public.t", [("sum", "val")], group_by=["grp"],
                                                                pool=self.pool)))
        res = self.add(Result("fetch every row (COPY out)", "s", 3.6, "3.6×",
                              fast_path="parallel COPY out of every shard"))
        self.interleave(res, lambda: timed(lambda: copy_out(b, sql.SQL("SELECT * FROM t"))),
                        lambda: timed(lambda: copy_out(f, sql.SQL("SELECT * FROM t"))),
                        lambda: timed(self._parallel_copy_out))
        join = "SELECT count(*), sum(b.val) FROM t a JOIN t2 b USING (id)"
        self.f.execute("TRUNCATE t2")
        fanout(self.fleet, "INSERT INTO {t2} SELECT * FROM {t} WHERE id % 4 = 0", {"t2": "public.t2", "t": "public.t"},
               write=True)
        self.b.execute("TRUNCATE t2")
        self.b.execute("INSERT INTO t2 SELECT * FROM t WHERE id % 4 = 0")
        for conn in (self.b, self.f):
            conn.execute("ANALYZE t2")
        res = self.add(Result("co-located join (t ⋈ t2 on the key), count + sum", "s", None, "(not in issue table)",
                              fast_path="per-shard-pair join on the workers, summed"))
        self.interleave(res, lambda: timed(lambda: b.execute(join).fetchone()),
                        lambda: timed(lambda: f.execute(join).fetchone()),
                        lambda: timed(lambda: fanout(self.fleet, "SELECT count(*), sum(b.val) FROM {a} a JOIN {b} b USING (id)",
                                                      {"a": "public.t", "b": "public.t2"}, pool=self.pool)))

    def _parallel_copy_out(self) -> None:
        topo = self.fleet.topology()
        dist = next(t for t in topo.tables if t.name.name == "t")

        def one(shard: Any) -> int:
            with self.pool.conn(shard.node) as c:
                return copy_out(c, sql.SQL("SELECT * FROM {}").format(sql.Identifier(shard.shard_schema, shard.shard_table)))

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, dist.shards))

    def _fresh_t2(self, conn: Conn) -> None:
        """Empty t2 and checkpoint every server, so that no timed write pays for the dirty pages or the
        autovacuum of the run before it (the runs alternate between the single server and the fleet)."""
        conn.execute("TRUNCATE t2")
        self.b.execute("CHECKPOINT")
        self.f.execute("CHECKPOINT")
        for node in sorted({s.node for s in table_shards(self.fleet, "public.t2").shards}):
            with self.pool.conn(node) as wc:
                wc.execute("CHECKPOINT")

    def writes(self) -> None:
        n = min(self.cfg.copy_rows, self.cfg.rows)
        b, f = self.b, self.f

        def ins(conn: Conn) -> Callable[[], float]:
            def go() -> float:
                self._fresh_t2(conn)
                return timed(lambda: conn.execute("INSERT INTO t2 SELECT * FROM t WHERE id <= %s", (n,)))
            return go

        def ins_fast() -> float:
            self._fresh_t2(self.f)
            return timed(lambda: fanout(self.fleet, "INSERT INTO {t2} SELECT * FROM {t} WHERE id <= %s",
                                         {"t2": "public.t2", "t": "public.t"}, [n], write=True, pool=self.pool))

        res = self.add(Result(f"INSERT … SELECT {n:,} rows", "s", 0.60, "0.60×",
                              fast_path="per-shard-pair INSERT … SELECT on the workers, two-phase commit"))
        self.interleave(res, ins(b), ins(f), ins_fast)
        rows = [(i, i % 1000, (i * 7) % 100000, f"copied row {i}") for i in range(1, n + 1)]
        text = "".join(f"{i}\t{g}\t{v}\t{p}\n" for i, g, v, p in rows).encode()

        def copy_text(conn: Conn) -> Callable[[], float]:
            def go() -> float:
                self._fresh_t2(conn)

                def body() -> None:  # what psql's \copy of a file does: the data as it is, in pieces
                    with conn.cursor().copy("COPY t2 (id, grp, val, pad) FROM STDIN") as cp:
                        for pos in range(0, len(text), 1 << 20):
                            cp.write(text[pos:pos + (1 << 20)])
                return timed(body)
            return go

        def copy_text_fast() -> float:
            self._fresh_t2(self.f)
            return timed(lambda: load_copy(self.fleet, "public.t2", text, pool=self.pool))

        res = self.add(Result(f"COPY {n:,} rows", "s", 1.15, "1.15×",
                              fast_path="only the key of each record read in the client (numpy), records sent "
                                        "unchanged into the shards in parallel, two-phase commit (pgfleet load)",
                              note=f"{len(text) / 1e6:.1f} MB of COPY text, as from a file"))
        self.interleave(res, copy_text(b), copy_text(f), copy_text_fast)

        def copy(conn: Conn) -> Callable[[], float]:
            def go() -> float:
                self._fresh_t2(conn)

                def body() -> None:
                    with conn.cursor().copy("COPY t2 (id, grp, val, pad) FROM STDIN") as cp:
                        for r in rows:
                            cp.write_row(r)
                return timed(body)
            return go

        def copy_fast() -> float:
            self._fresh_t2(self.f)
            return timed(lambda: load(self.fleet, "public.t2", rows, ["id", "grp", "val", "pad"], pool=self.pool))

        res = self.add(Result(f"COPY {n:,} rows from Python tuples", "s", None, "(not in issue table)",
                              fast_path="rows routed in the client, formatted by psycopg (write_row), parallel COPY, "
                                        "two-phase commit"))
        self.interleave(res, copy(b), copy(f), copy_fast)

    def tpcb(self) -> None:
        d = secs(self.cfg.duration)
        res = self.add(Result("pgbench TPC-B-like, 4 clients", "tps", None, "(not in issue table)",
                              note="pgbench_accounts range-distributed over 8 shards; branches, tellers, history "
                                   "stay on the coordinator"))
        self.interleave(res, lambda: run_pgbench(self.base, "coord", ["-n", "-c", "4", "-j", "2", "-T", d])["tps"],
                        lambda: run_pgbench(self.fleet_local, "coord", ["-n", "-c", "4", "-j", "2", "-T", d])["tps"])

    def growth(self) -> None:
        d = secs(self.cfg.duration)
        keys = 100_000
        growth: dict[str, Any] = {"lookup_latency_ms": {}, "count_seconds": {}, "worker_connections": {}}
        base_script = f"\\set id random(1, {keys})\nSELECT val FROM t WHERE id = :id;\n"
        growth["lookup_latency_ms"]["single"] = run_pgbench(self.base, "coord", ["-n", "-c", "1", "-T", d, "-M", "prepared"],
                                                         base_script)["latency_ms"]
        for count in self.cfg.shard_counts:
            name = f"s{count}"
            self.f.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, val int)").format(sql.Identifier(name)))
            self.fleet.distribute(DistributeSpec(QualifiedName("public", name), "id", HashSpec(count)))
            generate_into_shards(self.fleet, f"public.{name}", f"SELECT g, g FROM generate_series(1, {keys}) g", count)
            script = f"\\set id random(1, {keys})\nSELECT val FROM {name} WHERE id = :id;\n"
            growth["lookup_latency_ms"][count] = run_pgbench(self.fleet_local, "coord",
                                                          ["-n", "-c", "1", "-T", d, "-M", "prepared"], script)["latency_ms"]
            self.say(f"  point lookup latency at {count} shards: {growth['lookup_latency_ms'][count]:.3f} ms")
        for size in self.cfg.count_sizes:
            name = f"c{size}"
            for conn in (self.b, self.f):
                conn.execute(sql.SQL("CREATE TABLE {} (id bigint, val int)").format(sql.Identifier(name)))
            self.b.execute(sql.SQL("INSERT INTO {} SELECT g, g FROM generate_series(1, {}) g").format(
                sql.Identifier(name), sql.Literal(size)))
            self.b.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(name)))
            self.fleet.distribute(DistributeSpec(QualifiedName("public", name), "id", HashSpec(self.cfg.shards)))
            generate_into_shards(self.fleet, f"public.{name}", f"SELECT g, g FROM generate_series(1, {size}) g",
                                  self.cfg.shards)
            q = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
            b_samples: list[float] = []
            f_samples: list[float] = []
            fast_samples: list[float] = []
            table = f"public.{name}"
            for _ in range(self.cfg.reps):
                b_samples.append(timed(partial(self.b.execute, q)))
                f_samples.append(timed(partial(self.f.execute, q)))
                fast_samples.append(timed(partial(aggregate, self.fleet, table, [("count", None)], pool=self.pool)))
            b, f, fast = (statistics.median(x) for x in (b_samples, f_samples, fast_samples))
            growth["count_seconds"][size] = {"single": b, "fleet": f, "fast": fast}
            self.say(f"  count(*) at {size:,} rows: single {b:.3f} s, fleet {f:.3f} s, fast path {fast:.3f} s")
            for conn in (self.b, self.f):
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
        for clients in self.cfg.client_counts:
            conns = [connect(self.fleet_local.endpoint("coord")) for _ in range(clients)]
            try:
                for c in conns:
                    c.execute("SELECT count(*) FROM t WHERE val = -1").fetchone()
                per_worker = {}
                for w in self.fleet.topology().workers:
                    with self.fleet.worker_conn(w) as wc:
                        row = wc.execute("SELECT count(*) FROM pg_stat_activity "
                                         "WHERE application_name = 'postgres_fdw'").fetchone()
                        per_worker[w.name] = int(row[0]) if row else 0
                growth["worker_connections"][clients] = per_worker
                self.say(f"  {clients} coordinator clients → worker connections {per_worker}")
            finally:
                for c in conns:
                    c.close()
        self.extra["growth"] = growth

    def teardown(self) -> None:
        import contextlib

        for thing in (self.pool, self.b, self.fleet):
            with contextlib.suppress(Exception):  # best effort at the end of a benchmark
                thing.close()
        self.base.destroy()
        self.fleet_local.destroy()


GROUPS = ("lookups", "scans", "writes", "tpcb", "growth")


def run_bench(cfg: Config, out_dir: Path, say: Say, workdir: Path | None = None,
              only: tuple[str, ...] = GROUPS) -> dict[str, Any]:
    started = time.time()
    root = Path(tempfile.mkdtemp(prefix="pgfleet-bench-", dir=str(workdir) if workdir else "/tmp"))
    os.chmod(root, 0o755)
    bench = Bench(cfg, root, say)
    try:
        bench.setup()
        say("workloads (interleaved: baseline, fleet, fast path; median of "
            f"{cfg.reps} run{'s' if cfg.reps > 1 else ''} of {cfg.duration:g} s)")
        steps = {"lookups": bench.point_lookups, "scans": bench.scans, "writes": bench.writes, "tpcb": bench.tpcb,
                 "growth": bench.growth}
        for group in GROUPS:
            if group in only:
                if group == "growth":
                    say("how costs grow")
                steps[group]()
    finally:
        bench.teardown()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    report = {
        "config": asdict(cfg),
        "groups": list(only),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "elapsed_seconds": round(time.time() - started, 1),
        "results": [r.summary() for r in bench.results],
        **bench.extra,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    chart(report, out_dir / "bench.png")
    return report
