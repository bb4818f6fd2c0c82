"""A TPC-H-style load of 8 tables (one psql ``\\copy`` per table, as an ETL tool runs it) through the
routing router vs one plain server, in the same run.

    .venv/bin/python bench/tpch_load.py [--scale 0.5] [--reps 3] [--shards 8] [--coordinator] [--out bench/results]

Two throw-away local clusters under /tmp: a single server (the baseline) and a fleet (coordinator + 2
workers, the router with ``--route`` in its own process). Both get the 8 TPC-H tables (region, nation,
part, supplier, partsupp, customer, orders, lineitem, their usual columns and primary keys); on the
fleet, while empty, region and nation become reference tables, orders and lineitem are hash-distributed
on orderkey (co-located), part and partsupp on partkey (co-located), customer on custkey and supplier on
suppkey, over ``--shards`` shards. The data is synthetic but TPC-H-shaped (types, row counts per scale
factor, column widths; no dbgen here): one text file per table, written by ``COPY (SELECT … FROM
generate_series …) TO STDOUT`` on the single server. Scale 0.5 gives 3M lineitem rows (370 MB of text, 540 MB
in all).

Each repetition empties the 8 tables (TRUNCATE) and checkpoints every server of the side, then runs
``psql -c "\\copy table from 'file'"`` once per table, timing the psql process. The sides are
interleaved (their order alternates between repetitions); with ``--coordinator`` the first repetition
also loads through the coordinator itself (postgres_fdw, slow). After every load, count(*) of every table
is checked against the file's line count on that side (through the router and through the coordinator
for the fleet), so a broken load cannot pass as a fast one. Ratio = fleet time / single-server time
(lower is better), per table and for the total of the 8 loads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from psycopg import sql
from router_copy import psql
from router_relay import scratch

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.execute import Endpoint
from pgfleet.execute.connect import connect
from pgfleet.router.process import read_status, start_background, stop_background
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec

# In load order (as dbgen's files are usually loaded: the small dimension tables first).
TABLES: dict[str, str] = {
    "region": "r_regionkey int PRIMARY KEY, r_name char(25) NOT NULL, r_comment varchar(152)",
    "nation": "n_nationkey int PRIMARY KEY, n_name char(25) NOT NULL, n_regionkey int NOT NULL, n_comment varchar(152)",
    "part": "p_partkey int PRIMARY KEY, p_name varchar(55) NOT NULL, p_mfgr char(25) NOT NULL, p_brand char(10) NOT NULL, "
            "p_type varchar(25) NOT NULL, p_size int NOT NULL, p_container char(10) NOT NULL, "
            "p_retailprice numeric(15, 2) NOT NULL, p_comment varchar(23) NOT NULL",
    "supplier": "s_suppkey int PRIMARY KEY, s_name char(25) NOT NULL, s_address varchar(40) NOT NULL, s_nationkey int NOT NULL, "
                "s_phone char(15) NOT NULL, s_acctbal numeric(15, 2) NOT NULL, s_comment varchar(101) NOT NULL",
    "partsupp": "ps_partkey int NOT NULL, ps_suppkey int NOT NULL, ps_availqty int NOT NULL, ps_supplycost numeric(15, 2) NOT NULL, "
                "ps_comment varchar(199) NOT NULL, PRIMARY KEY (ps_partkey, ps_suppkey)",
    "customer": "c_custkey int PRIMARY KEY, c_name varchar(25) NOT NULL, c_address varchar(40) NOT NULL, c_nationkey int NOT NULL, "
                "c_phone char(15) NOT NULL, c_acctbal numeric(15, 2) NOT NULL, c_mktsegment char(10) NOT NULL, "
                "c_comment varchar(117) NOT NULL",
    "orders": "o_orderkey bigint PRIMARY KEY, o_custkey int NOT NULL, o_orderstatus char(1) NOT NULL, "
              "o_totalprice numeric(15, 2) NOT NULL, o_orderdate date NOT NULL, o_orderpriority char(15) NOT NULL, "
              "o_clerk char(15) NOT NULL, o_shippriority int NOT NULL, o_comment varchar(79) NOT NULL",
    "lineitem": "l_orderkey bigint NOT NULL, l_partkey int NOT NULL, l_suppkey int NOT NULL, l_linenumber int NOT NULL, "
                "l_quantity numeric(15, 2) NOT NULL, l_extendedprice numeric(15, 2) NOT NULL, l_discount numeric(15, 2) NOT NULL, "
                "l_tax numeric(15, 2) NOT NULL, l_returnflag char(1) NOT NULL, l_linestatus char(1) NOT NULL, "
                "l_shipdate date NOT NULL, l_commitdate date NOT NULL, l_receiptdate date NOT NULL, "
                "l_shipinstruct char(25) NOT NULL, l_shipmode char(10) NOT NULL, l_comment varchar(44) NOT NULL, "
                "PRIMARY KEY (l_orderkey, l_linenumber)",
}
REFERENCE = ("region", "nation")
# table -> (distribution key, co-located with)
DISTRIBUTED: dict[str, tuple[str, str | None]] = {
    "orders": ("o_orderkey", None), "lineitem": ("l_orderkey", "orders"), "customer": ("c_custkey", None),
    "part": ("p_partkey", None), "partsupp": ("ps_partkey", "part"), "supplier": ("s_suppkey", None),
}

# Filler text for names, addresses and comments (TPC-H's comments are lower-case word salad).
WORDS = ("furiously regular deposits sleep carefully among the ironic packages quickly final accounts haggle "
         "blithely express requests nag slyly pending instructions boost fluffily bold foxes detect even "
         "pinto beans wake quietly unusual theodolites integrate special asymptotes cajole across the silent "
         "dependencies use permanently daring courts along the thin dolphins are busily after the careful "
         "platelets according to the dogged excuses")
PHONE = "(10 + {k} % 25) || '-' || (100 + {k} * 7 % 900) || '-' || (100 + {k} * 13 % 900) || '-' || (1000 + {k} * 17 % 9000)"
ACCTBAL = "(({k}::bigint * 7919 % 1099998 - 99999) / 100.0)::numeric(15, 2)"
ORDERKEY = "((g - 1) / 8) * 32 + (g - 1) % 8 + 1"  # sparse, as dbgen's: 8 keys used out of every 32
GENERATORS: dict[str, str] = {
    "region": "SELECT g - 1, (ARRAY['AFRICA', 'AMERICA', 'ASIA', 'EUROPE', 'MIDDLE EAST'])[g], "
              "substr({w}, 1 + g * 7, 31 + g * 13) FROM generate_series(1, 5) g",
    "nation": "SELECT g - 1, 'NATION ' || g, (g - 1) % 5, substr({w}, 1 + g * 3, 31 + g * 4) FROM generate_series(1, 25) g",
    "part": "SELECT g, substr({w}, 1 + g % 97, 25 + g % 31), 'Manufacturer#' || (1 + g % 5), "
            "'Brand#' || (1 + g % 5) || (1 + g / 5 % 5), "
            "(ARRAY['STANDARD', 'SMALL', 'MEDIUM', 'LARGE', 'ECONOMY', 'PROMO'])[1 + g % 6] || ' ' || "
            "(ARRAY['ANODIZED', 'BURNISHED', 'PLATED', 'POLISHED', 'BRUSHED'])[1 + g / 6 % 5] || ' ' || "
            "(ARRAY['TIN', 'NICKEL', 'BRASS', 'STEEL', 'COPPER'])[1 + g / 30 % 5], 1 + g % 50, "
            "(ARRAY['SM', 'LG', 'MED', 'JUMBO', 'WRAP'])[1 + g % 5] || ' ' || "
            "(ARRAY['CASE', 'BOX', 'BAG', 'JAR', 'PKG', 'PACK', 'CAN', 'DRUM'])[1 + g / 5 % 8], "
            "((90000 + (g / 10) % 20001 + 100 * (g % 1000)) / 100.0)::numeric(15, 2), substr({w}, 1 + g % 89, 5 + g % 18) "
            "FROM generate_series(1, {p}) g",
    "supplier": f"SELECT g, 'Supplier#' || lpad(g::text, 9, '0'), substr({{w}}, 1 + g % 71, 10 + g % 30), g % 25, "
                f"{PHONE.format(k='g')}, {ACCTBAL.format(k='g')}, substr({{w}}, 1 + g % 83, 25 + g % 75) "
                "FROM generate_series(1, {s}) g",
    # 4 suppliers per part, all different (as dbgen's formula guarantees)
    "partsupp": "SELECT p, (p + i * ({s} / 4)) % {s} + 1, 1 + (p * 31 + i * 7) % 9999, "
                "((100 + (p * 7 + i * 13) % 99901) / 100.0)::numeric(15, 2), "
                "substr({w}, 1 + (p + i) % 53, 49 + (p + i) % 150) "
                "FROM generate_series(1, {p}) p CROSS JOIN LATERAL generate_series(0 * p, 3) i",
    "customer": f"SELECT g, 'Customer#' || lpad(g::text, 9, '0'), substr({{w}}, 1 + g % 71, 10 + g % 30), g % 25, "
                f"{PHONE.format(k='g')}, {ACCTBAL.format(k='g')}, "
                "(ARRAY['AUTOMOBILE', 'BUILDING', 'FURNITURE', 'MACHINERY', 'HOUSEHOLD'])[1 + g % 5], "
                "substr({w}, 1 + g % 89, 29 + g % 88) FROM generate_series(1, {c}) g",
    "orders": f"SELECT {ORDERKEY}, 1 + g::bigint * 7919 % {{c}}, (ARRAY['O', 'F', 'P'])[1 + g % 3], "
              "((g::bigint * 104729 % 50000000 + 85000) / 100.0)::numeric(15, 2), date '1992-01-01' + g * 13 % 2405, "
              "(ARRAY['1-URGENT', '2-HIGH', '3-MEDIUM', '4-NOT SPECIFIED', '5-LOW'])[1 + g % 5], "
              "'Clerk#' || lpad((1 + g % greatest(1, {o} / 1500))::text, 9, '0'), 0, substr({w}, 1 + g % 97, 19 + g % 60) "
              "FROM generate_series(1, {o}) g",
    # 1 to 7 lines per order (4 on average, as dbgen's)
    "lineitem": "SELECT ok, pk, (pk + (g + l) % 4 * ({s} / 4)) % {s} + 1, l, q, "
                "round(q * (90000 + (pk / 10) % 20001 + 100 * (pk % 1000)) / 100.0, 2), ((g + l) % 11 / 100.0)::numeric(15, 2), "
                "((g * l) % 9 / 100.0)::numeric(15, 2), "
                "CASE WHEN sd > date '1995-06-17' THEN 'N' ELSE (ARRAY['R', 'A'])[1 + (g + l) % 2] END, "
                "CASE WHEN sd > date '1995-06-17' THEN 'O' ELSE 'F' END, sd, od + 30 + (g + l) % 61, sd + 1 + (g * l) % 30, "
                "(ARRAY['DELIVER IN PERSON', 'COLLECT COD', 'NONE', 'TAKE BACK RETURN'])[1 + (g + l) % 4], "
                "(ARRAY['REG AIR', 'AIR', 'RAIL', 'SHIP', 'TRUCK', 'MAIL', 'FOB'])[1 + (g * 3 + l) % 7], "
                "substr({w}, 1 + (g + l) % 97, 10 + (g * l) % 34) "
                f"FROM (SELECT g, l, {ORDERKEY} AS ok, 1 + (g::bigint * 31 + l * 7919) % {{p}} AS pk, 1 + (g + l * 3) % 50 AS q, "
                "date '1992-01-01' + g * 13 % 2405 AS od, date '1992-01-01' + g * 13 % 2405 + 1 + (g + l) % 121 AS sd "
                "FROM generate_series(1, {o}) g CROSS JOIN LATERAL generate_series(1, 1 + g * 5 % 7) l) x",
}


def sizes(scale: float) -> dict[str, int]:
    """Row counts of the generated tables per TPC-H's scale factor (lineitem follows from orders)."""
    return {"p": max(40, round(200_000 * scale)), "s": max(4, round(10_000 * scale)),
            "c": max(30, round(150_000 * scale)), "o": max(300, round(1_500_000 * scale))}


def generate(single: LocalCluster, base: Path, scale: float) -> dict[str, tuple[Path, int, int]]:
    """Write one COPY text file per table; return table -> (file, lines, bytes)."""
    params = {k: sql.Literal(v) for k, v in sizes(scale).items()} | {"w": sql.Literal(WORDS)}
    files: dict[str, tuple[Path, int, int]] = {}
    with connect(single.endpoint("coord")) as conn, conn.cursor() as cur:
        for table, query in GENERATORS.items():
            path, lines, size = base / f"{table}.tbl", 0, 0
            statement = sql.SQL("COPY ({}) TO STDOUT").format(sql.SQL(query).format(**params))
            with path.open("wb") as out, cur.copy(statement) as copy:
                for chunk in copy:
                    out.write(chunk)
                    lines += bytes(chunk).count(b"\n")
                    size += len(chunk)
            path.chmod(0o644)
            files[table] = (path, lines, size)
    return files


def checkpoint(local: LocalCluster) -> None:
    for node in local.spec.nodes:
        with connect(local.endpoint(node.name)) as conn:
            conn.execute("CHECKPOINT")


def truncate(local: LocalCluster) -> None:
    with connect(local.endpoint("coord")) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(sql.Identifier(t) for t in TABLES)))


def counts(endpoint: Endpoint) -> dict[str, int]:
    with connect(endpoint) as conn:
        return {t: int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0])  # type: ignore[index]
                for t in TABLES}


def create_tables(local: LocalCluster) -> None:
    with connect(local.endpoint("coord")) as conn:
        for table, columns in TABLES.items():
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table), sql.SQL(columns)))


def distribute(fleet: Fleet, shards: int) -> None:
    for table in REFERENCE:
        fleet.reference(ReferenceSpec(QualifiedName("public", table)))
    for table, (key, colocate) in DISTRIBUTED.items():
        name = QualifiedName("public", table)
        if colocate is None:
            fleet.distribute(DistributeSpec(name, key, HashSpec(shards)))
        else:
            fleet.distribute(DistributeSpec(name, key, colocate_with=QualifiedName("public", colocate)))


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.5, help="TPC-H scale factor (0.5: 3M lineitem rows)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--shards", type=int, default=8, help="shards of each hash-distributed table")
    parser.add_argument("--coordinator", action="store_true", help="also load once through the coordinator (slow)")
    parser.add_argument("--out", default="bench/results", help="directory for tpch_load.json")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    base = scratch("pgfleet-tpch-")
    started = time.monotonic()
    clusters: list[LocalCluster] = []
    times: dict[str, list[dict[str, float]]] = {"single": [], "router": [], "coordinator": []}
    mismatches: list[str] = []
    try:
        single = LocalCluster.create(base / "single", workers=0, fast=True)
        clusters.append(single)
        fleet_local = LocalCluster.create(base / "fleet", workers=2, fast=True)
        clusters.append(fleet_local)
        with Fleet(fleet_local.endpoint("coord"), fleet_local) as fleet:
            fleet.register_local_workers()
            for local in (single, fleet_local):
                create_tables(local)
            distribute(fleet, args.shards)
        files = generate(single, base, args.scale)
        print("files: " + ", ".join(f"{t} {n:,} rows / {b / 1e6:.1f} MB" for t, (_, n, b) in files.items()), flush=True)
        router, _ = start_background(fleet_local, route=True)
        time.sleep(2)  # the router's first topology snapshot
        coord = fleet_local.endpoint("coord")
        via_router = Endpoint("router", "127.0.0.1", router.port, coord.dbname, coord.user, coord.password)
        sides = [("single", single, single.spec.coordinator.port, [single.endpoint("coord")]),
                 ("router", fleet_local, router.port, [via_router, coord])]
        for rep in range(args.reps):
            order = sides if rep % 2 == 0 else sides[::-1]
            if rep == 0 and args.coordinator:
                order = [*order, ("coordinator", fleet_local, coord.port, [coord])]
            for side, local, port, checks in order:
                truncate(local)
                checkpoint(local)
                run = {t: psql(local, port, f"\\copy {t} from '{path}'") for t, (path, _, _) in files.items()}
                times[side].append(run)
                for check in checks:
                    found = counts(check)
                    mismatches += [f"rep {rep}, {side} load, counted via {check.name}: {t} has {found[t]} rows, "
                                   f"the file {n}" for t, (_, n, _) in files.items() if found[t] != n]
                print(f"rep {rep} {side:11} total {sum(run.values()):6.2f} s  "
                      + "  ".join(f"{t} {s:.2f}" for t, s in run.items()), flush=True)
        time.sleep(1.2)  # the status file is written every second
        status = read_status(fleet_local)
        counters = status.counters if status else {}
    finally:
        if len(clusters) > 1:
            stop_background(clusters[1])
        for local in clusters:
            local.destroy()
        shutil.rmtree(base, ignore_errors=True)
    report(args, files, times, counters, mismatches, started)


def report(args: argparse.Namespace, files: dict[str, tuple[Path, int, int]], times: dict[str, list[dict[str, float]]],
           counters: dict[str, int], mismatches: list[str], started: float) -> None:
    medians: dict[str, dict[str, float]] = {}
    for side, runs in times.items():
        if runs:
            medians[side] = {t: statistics.median(run[t] for run in runs) for t in files}
            medians[side]["total"] = statistics.median(sum(run.values()) for run in runs)
    ratios = {side: {t: round(medians[side][t] / medians["single"][t], 3) for t in medians["single"]}
              for side in medians if side != "single"}
    print(f"\nmedians of {args.reps} runs (s), scale {args.scale}, {args.shards} shards; ratio = side / single")
    header = f"{'table':10} {'rows':>10} {'MB':>7} {'single':>8} {'router':>8} {'ratio':>6}"
    print(header + (f" {'coord.':>8} {'ratio':>6}" if "coordinator" in medians else ""))
    for t in [*files, "total"]:
        rows, size = (files[t][1], files[t][2]) if t in files else (sum(f[1] for f in files.values()),
                                                                   sum(f[2] for f in files.values()))
        line = (f"{t:10} {rows:>10,} {size / 1e6:>7.1f} {medians['single'][t]:>8.2f} {medians['router'][t]:>8.2f} "
                f"{ratios['router'][t]:>6.2f}")
        if "coordinator" in medians:
            line += f" {medians['coordinator'][t]:>8.2f} {ratios['coordinator'][t]:>6.2f}"
        print(line)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"scale": args.scale, "reps": args.reps, "shards": args.shards,
              "files": {t: {"rows": n, "bytes": b} for t, (_, n, b) in files.items()}, "seconds": times,
              "medians": medians, "ratios": ratios, "count_mismatches": mismatches, "router_counters": counters,
              "elapsed_seconds": round(time.monotonic() - started)}
    (out / "tpch_load.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"router: {counters.get('routed', 0)} statements routed; raw results: {out / 'tpch_load.json'} "
          f"({result['elapsed_seconds']} s)", file=sys.stderr)
    if mismatches:
        print("ROW COUNTS DIFFER:\n  " + "\n  ".join(mismatches), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
