"""An API that echoes the token back in every error answer: the token still appears in no output at all.

The emulator's `echo_token` writes the presented token into every text of each error answer (and a header).
A real run then meets per-item rejections, 5xx and 429s, writes reports, a notification and the ledger; every
byte the daemon wrote or printed is searched for the token."""

import io
import json
import sys
import zipfile
from pathlib import Path

import pytest
from support import TOKEN, csv_text, make_project

from daemon.sandbox import Emulator, EmulatorConfig

POISON = "ECHO00000003"


def every_byte(root: Path) -> dict[str, bytes]:
    """Each file below `root` (a workbook's members unpacked: they are compressed)."""
    found: dict[str, bytes] = {}
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        found[str(path)] = data
        if path.suffix == ".xlsx":
            with zipfile.ZipFile(io.BytesIO(data)) as book:
                for name in book.namelist():
                    found[f"{path}!{name}"] = book.read(name)
    return found


@pytest.mark.slow
def test_a_token_echoed_by_the_api_reaches_no_output(tmp_path: Path) -> None:
    emulator = Emulator(
        EmulatorConfig(
            rate_limit=None,
            echo_token=True,
            poison_codes=frozenset({POISON}),
            fail_rate=0.3,
            throttle_rate=0.2,
            throttle_retry_after=0.1,
            seed=7,
        )
    )
    emulator.start()
    told = tmp_path / "told.json"
    hook = tmp_path / "hook.py"
    hook.write_text(f"import sys, pathlib\npathlib.Path({str(told)!r}).write_text(sys.stdin.read())\n")
    try:
        project = make_project(
            tmp_path / "site",
            emulator.base_url,
            upload={"mode": "sync"},
            retry={"max_attempts": 30},
            notify={"command": [sys.executable, str(hook)], "on": ["completed_with_errors"]},
        )
        rows = [(f"ECHO{i:08d}", f"L{i}") for i in range(250)]
        project.drop("lot.csv", csv_text(["extended_id", "batch"], rows))
        done = project.cli("run", "--once", "--log-level", "debug", timeout=180)
        status = project.cli("status")
        status_json = project.cli("status", "--json")
        stats = emulator.stats()
    finally:
        emulator.stop()
    assert done.returncode == 0, done.stderr + done.stdout[-3000:]
    assert stats.poisoned >= 1  # the API's answers did carry the token
    assert stats.injected_failures + stats.throttled >= 1
    outputs = {
        "run stdout": done.stdout.encode(),
        "run stderr": done.stderr.encode(),
        "status": status.stdout.encode() + status.stderr.encode(),
        "status --json": status_json.stdout.encode(),
        **every_byte(project.root),
        **({"notification": told.read_bytes()} if told.exists() else {}),
    }
    leaks = [where for where, data in outputs.items() if TOKEN.encode() in data]
    assert leaks == []
    assert told.exists()  # the notification was sent (and searched)
    rejected = [r for r in project.report("lot") if r["status"] == "rejected"]
    assert [r["extended_id"] for r in rejected] == [POISON]
    assert "(token UAT ***)" in rejected[0]["detail"]  # echoed, and scrubbed where it was kept
    assert '"api_answer"' in done.stdout  # the debug log of every answer was searched too
    assert json.loads(status_json.stdout)["files"] == {"completed_with_errors": 1}
