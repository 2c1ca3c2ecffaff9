"""Helpers for end-to-end tests: a project folder with a config, and the real CLI run as a subprocess."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openpyxl

from daemon.config import load_settings
from daemon.service import Service

TOKEN = "sandbox-token"


@dataclass
class Project:
    """A folder laid out like a deployment: config.toml, inbox/, outbox/, archive/, failed/, ledger."""

    root: Path
    base_url: str

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def ledger(self) -> Path:
        return self.root / "state" / "ledger.sqlite3"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCM_")}
        env.update({"SCM_API__TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}, **extra)
        return {k: v for k, v in env.items() if v or not k.startswith("SCM_")}  # SCM_X="" means: not set

    def cli(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        """Run `scm-daemon ARGS -c config.toml` to its end."""
        return subprocess.run(
            [sys.executable, "-m", "daemon", *args, "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(**env),
            cwd=self.root,
            check=False,
        )

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        """Start `scm-daemon run ARGS -c config.toml` in the background; output goes to service.log."""
        with (self.root / "service.log").open("a") as log:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(
                [sys.executable, "-m", "daemon", "run", *args, "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                env=self.env(**env),
                cwd=self.root,
            )

    @contextmanager
    def running(self, *args: str, **env: str) -> Iterator[subprocess.Popen[str]]:
        """The service in the background for the block; killed at the end if the block left it running."""
        process = self.start(*args, **env)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)

    def drop(self, name: str, content: str | bytes) -> Path:
        """Write a file into the inbox the way a copy would: under a hidden name, then renamed."""
        tmp = self.inbox / f".{name}.part"
        if isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        else:
            tmp.write_bytes(content)
        target = self.inbox / name
        tmp.rename(target)
        return target

    def reports(self) -> list[str]:
        """The names of the report files in the outbox (not the dashboard, index.html), sorted."""
        if not self.outbox.exists():
            return []
        return sorted(p.name for p in self.outbox.iterdir() if p.name != "index.html")

    def summary(self, stem: str) -> dict[str, Any]:
        return json.loads((self.outbox / f"{stem}.summary.json").read_text(encoding="utf-8"))

    def report(self, stem: str, kind: str = "report") -> list[dict[str, str]]:
        """A report's rows: of the CSV, its delimiter read from the header (the input's, or reports.delimiter);
        of `<stem>.<kind>.xlsx` when there is no CSV (a workbook input's rejected file), empty cells as ""."""
        workbook = self.outbox / f"{stem}.{kind}.xlsx"
        if workbook.exists() and not (self.outbox / f"{stem}.{kind}.csv").exists():
            book = openpyxl.load_workbook(workbook, read_only=True)  # read-only keeps the file open: close it
            try:
                rows = book.worksheets[0].iter_rows(values_only=True)
                header, *body = [["" if v is None else str(v) for v in row] for row in rows]
            finally:
                book.close()
            return [dict(zip(header, row, strict=False)) for row in body]
        with (self.outbox / f"{stem}.{kind}.csv").open(encoding="utf-8-sig", newline="") as f:
            first = f.readline()
            f.seek(0)
            delimiter = next((c for c in first if c in ",;\t|"), ",")
            return list(csv.DictReader(f, delimiter=delimiter))

    def wait_for(self, path: Path, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                log = (self.root / "service.log").read_text() if (self.root / "service.log").exists() else ""
                raise AssertionError(f"{path} did not appear within {timeout} s\n{log[-4000:]}")
            time.sleep(0.05)


def make_project(root: Path, base_url: str, **sections: dict[str, Any]) -> Project:
    """A project whose config points at the emulator, fast enough for tests (no throttling, short waits)."""
    config: dict[str, dict[str, Any]] = {
        "api": {"base_url": base_url, "requests_per_second": 200, "max_in_flight": 4, "read_timeout": 10},
        "watch": {"settle_seconds": 0.2},
        "retry": {"base_delay_seconds": 0.05, "max_delay_seconds": 0.5},
        "paths": {"ledger": "state/ledger.sqlite3"},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    lines: list[str] = []
    for name, values in config.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        lines.append("")
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text("\n".join(lines), encoding="utf-8")
    (root / "inbox").mkdir(exist_ok=True)
    return Project(root, base_url)


def csv_text(header: Sequence[str], rows: Iterable[Sequence[str]], delimiter: str = ",") -> str:
    """A CSV document as Excel would save it."""
    lines = [delimiter.join(header)]
    lines.extend(delimiter.join(r) for r in rows)
    return "\r\n".join(lines) + "\r\n"


def in_process(project: Project, monotonic: Callable[[], float]) -> Service:
    """The project's service built as production builds it, in this process, with its folders made (not started)."""
    settings = load_settings(project.config, env={"SCM_API__TOKEN": TOKEN})
    project.ledger.parent.mkdir(parents=True, exist_ok=True)
    for folder in (project.outbox, project.archive, project.failed):
        folder.mkdir(exist_ok=True)
    return Service.from_settings(settings, monotonic=monotonic)


def wait_ready(project: Project, timeout: float = 60) -> None:
    """Wait until a service started with `project.start()` has passed its start-up check (GET /api/v2/me/)."""
    log = project.root / "service.log"
    deadline = time.monotonic() + timeout
    while '"api_ready"' not in (log.read_text(encoding="utf-8") if log.exists() else ""):
        if time.monotonic() > deadline:
            raise AssertionError(f"the service did not pass its start-up check within {timeout} s")
        time.sleep(0.05)


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Signal a running service and wait for its exit code."""
    process.send_signal(sig)
    return process.wait(timeout=timeout)


def wait_until(
    predicate: Callable[[], object], timeout: float = 60, what: str = "condition", *logs_of: Project
) -> None:
    """Poll until `predicate()` is true; past `timeout` fail, showing the end of the named projects' service logs."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            logs = [(p.root / "service.log").read_text(encoding="utf-8")[-3000:] for p in logs_of]
            raise AssertionError("\n".join([f"{what} not reached within {timeout} s", *logs]))
        time.sleep(0.05)


def log_events(project: Project, name: str | None = None) -> list[dict[str, Any]]:
    """The JSON events of the project's service.log in order (only those called `name`, if given)."""
    path = project.root / "service.log"
    found = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "event" in event and name in (None, event["event"]):
            found.append(event)
    return found
