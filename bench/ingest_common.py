"""The part the ingest benchmarks share: generate a file, time intake.take into a fresh ledger, print the figures."""

import argparse
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from daemon.config import Settings
from daemon.intake import take
from daemon.ledger import Ledger

ARGS = argparse.Namespace()  # the parsed command line, for a script's generate()


def run(
    doc: str,
    *,
    suffix: str,
    default_rows: int,
    generate: Callable[[Path, int], None],
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Parse --rows/--keep (and the script's own `options`), generate `bench<suffix>`, ingest it, print the figures.

    `generate` may read the parsed arguments from the namespace it is given through `options` (see ingest_xlsx).
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rows", type=int, default=default_rows)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the files")
    if options is not None:
        options(parser)
    args = parser.parse_args()
    ARGS.__dict__.update(vars(args))
    with tempfile.TemporaryDirectory(prefix="scm-bench-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / f"bench{suffix}"
        generate(source, args.rows)
        size_mb = source.stat().st_size / 1e6
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ledger = Ledger(folder / "bench.sqlite3")
        started = time.perf_counter()
        file_id = take(source, ledger, Settings())
        elapsed = time.perf_counter() - started
        counts = ledger.row_counts(file_id) if file_id else {}
        ledger.close()
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        reader_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # a workbook's reader process
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    print(f"rows: {args.rows:,} ({size_mb:.1f} MB of {suffix.lstrip('.').upper()})")
    print(f"statuses: {dict((str(k), v) for k, v in counts.items())}")
    print(f"ingest: {elapsed:.2f} s, {args.rows / elapsed:,.0f} rows/s")
    reader = f"; the workbook reader's: {reader_mb:.0f} MB" if reader_mb else ""
    print(f"peak RSS: {peak_mb:.0f} MB (before ingest: {rss_before / 1024:.0f} MB){reader}")
    return 0
