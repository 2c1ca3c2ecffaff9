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


def _unit_settings() -> tuple[str, dict[str, str], str]:
    """The unit's ExecStart, its Environment= variables and its StateDirectory."""
    text = UNIT.read_text(encoding="utf-8")
    exec_start = re.search(r"^ExecStart=(.+)$", text, re.MULTILINE)
    state = re.search(r"^StateDirectory=(\S+)$", text, re.MULTILINE)
    assert exec_start is not None
    assert state is not None
    env: dict[str, str] = {}
    for line in re.findall(r"^Environment=(.+)$", text, re.MULTILINE):
        for assignment in line.split():
            name, _, value = assignment.partition("=")
            env[name] = value
    return exec_start.group(1), env, state.group(1)


def test_status_with_the_units_config_reads_the_ledger_the_service_writes(tmp_path: Path) -> None:
    # The service runs with the unit's environment; an operator runs `scm-daemon status -c <the same file>` from a
    # shell without it. Both must name one ledger, in the unit's state directory.
    from daemon.config import load_settings

    exec_start, unit_env, state = _unit_settings()
    config_path = re.search(r"--config (\S+)", exec_start)
    assert config_path is not None
    readme = (UNIT.parent / "README.md").read_text(encoding="utf-8")
    documented = re.search(r"```toml\n(.*?)```", readme, re.DOTALL)  # step 4: the config file the unit reads
    assert documented is not None
    config = tmp_path / "config.toml"
    config.write_text(documented.group(1), encoding="utf-8")
    service = load_settings(config, env=unit_env)
    shell = load_settings(config, env={})
    assert service.paths.ledger == shell.paths.ledger
    assert service.paths.ledger.parent == Path("/var/lib") / state
    assert config_path.group(1) in readme


def test_one_virtual_environment_path_in_the_unit_and_both_readmes() -> None:
    exec_start, _, _ = _unit_settings()
    venv = str(Path(exec_start.split()[0]).parent.parent)
    assert venv == "/opt/scm-daemon/venv"
    for doc in (UNIT.parent.parent / "README.md", UNIT.parent / "README.md"):
        text = doc.read_text(encoding="utf-8")
        uses = re.findall(r"/opt/scm-daemon[^\s`'\"),]*", text)
        assert uses, doc
        assert all(use.startswith(venv) for use in uses), (doc, sorted(set(uses)))
