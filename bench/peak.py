"""The peak resident memory of a service process, read from /proc while it runs.

Not wait4()'s ru_maxrss: Linux carries the high-water mark of the memory a process had before it called exec
into that figure, so a service started by this benchmark (a process holding the emulator and a generated file of
millions of rows) was reported with the benchmark's own peak: 202 MB for a service whose own peak was 101 MB.
VmHWM is the process's own high-water mark; it only rises, so a reading every 20 ms misses at most the last ones
before exit.
"""

import threading
from pathlib import Path


class PeakRss:
    """Follows a process's VmHWM from a thread until stop(); peak_mb is the highest read."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid = pid
        self.peak_mb = 0.0
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="peak-rss", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return  # gone (or a zombie without its memory): the last reading stands
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)

    def _follow(self) -> None:
        while not self._stop.wait(self._every):
            self._read()

    def stop(self) -> float:
        """Stop following (call it before reaping the process, if possible) and return the peak in MB."""
        self._read()
        self._stop.set()
        self._thread.join()
        return self.peak_mb
