"""Benchmark: the loop never stalls. The longest gap between two uploads while a big file is taken (read, recorded,
planned) during another file's upload.

Usage: .venv/bin/python bench/stall.py [--rows 1000000] [--first 60000] [--lot 10000]
The emulator throttles uploads at 10/s with 300 ms latency; the service (`run --once`, requests_per_second = 10)
starts on a first file of `--first` distinct rows (sync: 100 codes a call, one call every ~0.1 s for minutes);
once its first upload has arrived, a file of `--rows` rows (lots of `--lot` rows sharing data) is dropped into the
inbox. Printed: the longest gap between two consecutive upload arrivals from that drop until the first file's last
upload, with the pace's own gap (1 / 0.97 x rate) to compare, and the service's peak RSS.
Budget: no gap longer than the pace's gap + 0.2 s.
"""

import argparse
import itertools
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from end_to_end import generate as generate_lots
from peak import PeakRss
from upload import POLL, TOKEN, generate, scratch_folder, service_command, stop_process, verdict, write_config

from daemon.pacing import PACE_HEADROOM
from daemon.sandbox import Emulator, EmulatorConfig

BUDGET_EXTRA = 0.2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the big file dropped meanwhile")
    parser.add_argument("--first", type=int, default=60_000, help="rows of the file uploading when it comes")
    parser.add_argument("--lot", type=int, default=10_000, help="rows of the big file sharing data (async jobs)")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep the service's files")
    parser.add_argument("--timeout", type=float, default=1200.0)
    cli = parser.parse_args()
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    args = argparse.Namespace(rate=10.0, in_flight=8, mode="auto", limit=10.0)
    emulator = Emulator(EmulatorConfig(token=TOKEN, rate_limit=10.0, latency=0.3))
    base_url = emulator.start(host="127.0.0.1")
    with scratch_folder(cli.keep, "stall") as root, emulator:
        config = write_config(root, base_url, args)
        generate(root / "inbox" / "first.csv", cli.first, 0)  # every row's data differs: sync calls
        big = root / "big.csv"
        generate_lots(big, cli.rows, cli.lot)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCM_")}
        env["SCM_API__TOKEN"] = TOKEN
        with (root / "service.log").open("wb") as log:
            started = time.monotonic()
            process = subprocess.Popen(service_command(config), stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env)
            peak = PeakRss(process.pid)
            try:
                while not emulator.upload_arrivals() and process.poll() is None:
                    time.sleep(POLL)
                dropped = time.monotonic()
                os.rename(big, root / "inbox" / "big.csv")  # one atomic drop
                status = os.wait4(process.pid, 0)[1] if _wait(process, started + cli.timeout, peak) else -1
            finally:
                stop_process(process)
        stats = emulator.stats()
        # From the drop to the first file's last upload, while there was always an upload due.
        last_sync = max(emulator.upload_arrivals("scm_upload"), default=dropped)
        arrivals = [t for t in emulator.upload_arrivals() if dropped <= t <= last_sync]
    gaps = sorted(b - a for a, b in itertools.pairwise(arrivals))
    pace_gap = 1.0 / (args.rate * PACE_HEADROOM)
    print(f"first file: {cli.first:,} rows (sync); dropped meanwhile: {cli.rows:,} rows in lots of {cli.lot:,}")
    print(f"uploads from the drop to the first file's last: {len(arrivals):,}; 429s: {stats.throttled}")
    if gaps:
        p99 = gaps[int(0.99 * (len(gaps) - 1))]
        print(f"gap between uploads: longest {gaps[-1]:.3f} s, 99th percentile {p99:.3f} s, pace {pace_gap:.3f} s")
    ended = os.waitstatus_to_exitcode(status) if status >= 0 else "timeout"
    print(f"service exit status {ended}; peak RSS {peak.peak_mb:.0f} MB")
    missed = []
    if not gaps:
        missed.append("no uploads after the drop")
    elif gaps[-1] > pace_gap + BUDGET_EXTRA:
        missed.append(f"the longest gap {gaps[-1]:.3f} s is over {pace_gap + BUDGET_EXTRA:.3f} s")
    return verdict(missed)


def _wait(process: subprocess.Popen[bytes], deadline: float, peak: PeakRss) -> bool:
    """Wait for the service to exit without reaping it, and take its peak memory before it is reaped."""
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            peak.stop()
            return True
        time.sleep(0.05)
    return False


if __name__ == "__main__":
    sys.exit(main())
