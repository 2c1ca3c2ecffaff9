"""Benchmark: the whole pipeline (`run --once`: take, plan, upload, report) at growing sizes, against the emulator.

Usage: .venv/bin/python bench/end_to_end.py [--sizes 100000,1000000,5000000] [--lot 0] [--in-flight 8]
                                            [--ledger sqlite|postgresql]
       .venv/bin/python bench/end_to_end.py --sizes 1000000 --lot 10000     (rows share data per lot: async jobs)
       .venv/bin/python bench/end_to_end.py --stall 200000                   (the longest gap between two uploads
                                                                             while a 1M-row file is taken)
Each size is a generated CSV of distinct random 12-character codes and four columns, uploaded through the real
service process with the emulator's throttle off and no latency. rows/s is the rows of the file over the service
process's wall time, from its start to its exit (interpreter start and report writing included); peak RSS is the
process's own high-water mark (VmHWM, followed while it runs: bench/peak.py says why not wait4).
The emulator must not be the limit: its ceiling (upload calls per second it answers to several clients with no
service running, in this process) is measured first and printed with the share of it the service used.
With --ledger postgresql the ledger is a throw-away database on the PostgreSQL server at 127.0.0.1:5432 (user
postgres, trust authentication), created for each size and dropped after it (with --keep too); the server's own
memory is not in the peak RSS, which is the service process's.
Budget: >= 25,000 rows/s at every size (15,000 on PostgreSQL), rows/s at the largest size within 20 % of the
smallest, peak RSS <= 150 MB.
"""

import argparse
import json
import os
import random
import resource
import secrets
import shlex
import string
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak import PeakRss
from upload import TOKEN, scratch_folder, verdict

from daemon.sandbox import Emulator, EmulatorConfig

BUDGET_RATE = {"sqlite": 25_000.0, "postgresql": 15_000.0}
BUDGET_FLAT = 0.20
BUDGET_RSS_MB = 150.0
CEILING_SECONDS = 3.0
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"  # loopback only, trust
PG_URL = "postgresql://postgres@127.0.0.1:5432/{name}"


def generate(path: Path, rows: int, lot: int, seed: int = 13) -> None:
    """A CSV of distinct random codes; with lot > 0 every `lot` consecutive rows share their data."""
    rnd = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    seen: set[str] = set()
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("extended_id,batch,intended_market,production_date\r\n")
        lines: list[str] = []
        for i in range(rows):
            code = "".join(rnd.choices(alphabet, k=12))
            while code in seen:
                code = "".join(rnd.choices(alphabet, k=12))
            seen.add(code)
            batch = f"LOT{i // lot:07d}" if lot else f"B{i:09d}"
            day = 1 + (i // lot if lot else i) % 28
            lines.append(f"{code},{batch},de,2026-11-{day:02d}\r\n")
            if len(lines) == 50_000:
                f.writelines(lines)
                lines.clear()
        f.writelines(lines)


@contextmanager
def ledger_for(kind: str, rows: int) -> Iterator[str]:
    """paths.ledger for one size: the SQLite file in the work folder, or a PostgreSQL database made for the run
    and dropped after it."""
    if kind == "sqlite":
        yield "state/ledger.sqlite3"
        return
    name = f"scm_bench_{rows}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield PG_URL.format(name=name)
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def write_config(root: Path, base_url: str, in_flight: int, ledger: str, rows: int = 0) -> Path:
    """The service's configuration; a file of more rows than a worksheet holds (intake.max_rows, 1,048,576) has
    the limit raised to its size, as an operator taking such CSV files would."""
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    path = root / "config.toml"
    path.write_text(
        "[api]\n"
        f'base_url = "{base_url}"\n'
        "requests_per_second = 5000\n"
        f"max_in_flight = {in_flight}\n"
        "[upload]\n"
        'mode = "auto"\n'
        "[watch]\n"
        "settle_seconds = 0.1\n"
        "[poll]\n"
        "interval_seconds = 0.2\n"
        "max_interval_seconds = 0.5\n"
        "[intake]\n"
        f"max_rows = {max(rows + 1, 1_048_576)}\n"  # the header is a row too
        "[paths]\n"
        f"ledger = {json.dumps(ledger)}\n",
        encoding="utf-8",
    )
    return path


def emulator_ceiling(base_url: str, clients: int) -> float:
    """Sync upload calls of 100 items per second the emulator answers to `clients` threads."""
    body = {"data_key": "extended_id", "items": [{"extended_id": f"CEIL{i:08d}", "batch": "c"} for i in range(100)]}
    stop = time.monotonic() + CEILING_SECONDS
    counts = [0] * clients

    def client(n: int) -> None:
        with requests.Session() as session:
            session.headers["Authorization"] = f"UAT {TOKEN}"
            while time.monotonic() < stop:
                answer = session.post(f"{base_url}/api/v2/scm/upload/", json=body, timeout=30)
                answer.raise_for_status()
                counts[n] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - started)


def run_service(root: Path, config: Path, timeout: float, wrap: str = "") -> tuple[int, float, float]:
    """Run `run --once` to its end: exit status, wall seconds, peak RSS in MB (its VmHWM, bench/peak.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCM_")}
    env["SCM_API__TOKEN"] = TOKEN
    command = [*shlex.split(wrap), sys.executable, "-m", "daemon", "run", "--once", "-c", str(config)]
    with (root / "service.log").open("wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env)
        peak = PeakRss(process.pid)
        killer = threading.Timer(timeout, process.kill)
        killer.start()
        try:
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped yet
            wall = time.monotonic() - started
            peak_mb = peak.stop()
            process.wait()
        finally:
            killer.cancel()
    return process.returncode, wall, peak_mb


def one_size(args: argparse.Namespace, rows: int, emulator: Emulator, base_url: str) -> dict[str, Any]:
    with scratch_folder(args.keep, f"e2e-{rows}") as root, ledger_for(args.ledger, rows) as ledger:
        config = write_config(root, base_url, args.in_flight, ledger, rows)
        made = time.monotonic()
        generate(root / "bench.csv", rows, args.lot)
        generated = time.monotonic() - made
        (root / "bench.csv").rename(root / "inbox" / "bench.csv")
        before = emulator.stats()
        code, wall, rss = run_service(root, config, args.timeout, args.wrap)
        after = emulator.stats()
        summary_path = root / "outbox" / "bench.summary.json"
        uploaded = None
        if summary_path.exists():
            uploaded = json.loads(summary_path.read_text(encoding="utf-8")).get("rows", {}).get("uploaded")
        if code != 0:
            print((root / "service.log").read_text(encoding="utf-8", errors="replace")[-3000:], file=sys.stderr)
    calls = after.sync_calls - before.sync_calls
    jobs = after.async_jobs - before.async_jobs
    return {
        "rows": rows,
        "exit": code,
        "wall": wall,
        "rate": rows / wall,
        "rss": rss,
        "calls": calls,
        "jobs": jobs,
        "uploaded": uploaded,
        "generated": generated,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000,5000000", help="comma-separated row counts")
    parser.add_argument("--lot", type=int, default=0, help="rows per set of shared data (0: every row distinct)")
    parser.add_argument("--in-flight", type=int, default=8, help="the daemon's api.max_in_flight")
    parser.add_argument(
        "--wrap",
        default="",
        help="run the service under this command (e.g. a profiler; the peak RSS is then the command's)",
    )
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep the service's files")
    parser.add_argument(
        "--ledger",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the ledger's backend: a SQLite file, or a throw-away database on PostgreSQL at 127.0.0.1:5432",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one service run may take")
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s]
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {os.cpu_count()} cores; emulator in this process, service in its own")
    where = "a SQLite file" if args.ledger == "sqlite" else "PostgreSQL at 127.0.0.1:5432, a new database per size"
    print(f"ledger: {where}")
    emulator = Emulator(
        EmulatorConfig(token=TOKEN, rate_limit=None, latency=0.0, task_pending_seconds=0.05, task_running_seconds=0.05)
    )
    base_url = emulator.start(host="127.0.0.1")
    with emulator:
        ceiling = emulator_ceiling(base_url, args.in_flight)
        print(
            f"emulator ceiling: {ceiling:,.0f} sync calls/s of 100 items = {ceiling * 100:,.0f} rows/s "
            f"({args.in_flight} clients, {CEILING_SECONDS:g} s, no service running)"
        )
        shape = f"lots of {args.lot:,} rows share data (async jobs)" if args.lot else "every row's data distinct (sync)"
        print(f"files: four columns, distinct random codes, {shape}")
        print(
            f"{'rows':>10} {'exit':>4} {'wall s':>8} {'rows/s':>9} {'of ceiling':>10} {'peak RSS':>9} {'calls':>7} "
            f"{'jobs':>6}"
        )
        results = []
        for rows in sizes:
            r = one_size(args, rows, emulator, base_url)
            results.append(r)
            share = (r["calls"] + r["jobs"]) / r["wall"] / ceiling if ceiling else 0.0  # of upload calls/s
            print(
                f"{rows:>10,} {r['exit']:>4} {r['wall']:>8.1f} {r['rate']:>9,.0f} {share:>10.0%} "
                f"{r['rss']:>6.0f} MB {r['calls']:>7} {r['jobs']:>6}",
                flush=True,
            )
    missed = []
    for r in results:
        if r["exit"] != 0 or r["uploaded"] != r["rows"]:
            missed.append(f"{r['rows']:,} rows: exit {r['exit']}, {r['uploaded']} reported uploaded")
        if r["rate"] < BUDGET_RATE[args.ledger]:
            missed.append(f"{r['rows']:,} rows: {r['rate']:,.0f} rows/s is under {BUDGET_RATE[args.ledger]:,.0f}")
        if r["rss"] > BUDGET_RSS_MB:
            missed.append(f"{r['rows']:,} rows: peak RSS {r['rss']:.0f} MB is over {BUDGET_RSS_MB:.0f} MB")
    if len(results) > 1 and results[-1]["rate"] < (1 - BUDGET_FLAT) * results[0]["rate"]:
        missed.append(
            f"rows/s at {results[-1]['rows']:,} is {1 - results[-1]['rate'] / results[0]['rate']:.0%} under "
            f"{results[0]['rows']:,}"
        )
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bench process peak RSS (emulator and generator): {own:.0f} MB")
    return verdict(missed)


if __name__ == "__main__":
    sys.exit(main())
