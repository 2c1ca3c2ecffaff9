"""The systemd unit: `systemd-analyze verify` is clean and its offline security exposure is 2.0 or less."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "systemd" / "scm-daemon.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian: apt install systemd)"
)


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The unit as shipped, with ExecStart pointing at this checkout's console script (verify checks it exists)."""
    script = Path(sys.executable).parent / "scm-daemon"
    if not script.exists():
        pytest.skip("the scm-daemon console script is not installed in this environment")
    text = UNIT.read_text(encoding="utf-8").replace("/opt/scm-daemon/venv/bin/scm-daemon", str(script))
    copy = tmp_path / "scm-daemon.service"
    copy.write_text(text, encoding="utf-8")
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_analyze
def test_the_unit_verifies_cleanly(unit: Path) -> None:
    result = analyze("verify", str(unit))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


@needs_analyze
def test_the_units_security_exposure_is_at_most_2(unit: Path) -> None:
    result = analyze("security", "--offline=true", str(unit))
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0, result.stdout


def test_the_unit_declares_what_the_service_relies_on() -> None:
    text = UNIT.read_text(encoding="utf-8")
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=scm-daemon",
        "LoadCredential=scantrust-token:",  # config.CREDENTIAL_NAME
        "RequiresMountsFor=",
        "User=scm-daemon",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert f"\n{line}" in text, line
