"""The README's Prometheus examples hold: its scrape config and alert rules pass promtool, the rules fire when they
should (tests/prometheus/rules_test.yml), and a real scrape passes promtool's lint of names and units."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from support import TOKEN, csv_text, make_project

from daemon.config import load_settings
from daemon.sandbox import Emulator
from daemon.service import Service

README = Path(__file__).resolve().parent.parent / "README.md"
RULES_TEST = Path(__file__).resolve().parent / "prometheus" / "rules_test.yml"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian's prometheus package; .ci/run installs it)"
)


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False)


def readme_yaml() -> list[str]:
    section = README.read_text(encoding="utf-8").split("## Metrics and health check", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```yaml\n(.*?)```", section, re.S)


def test_the_readme_scrape_config_and_alert_rules_are_valid_and_fire_when_they_should(tmp_path: Path) -> None:
    scrape, rules = readme_yaml()
    (tmp_path / "rules.yml").write_text(rules)
    (tmp_path / "prometheus.yml").write_text('rule_files: ["rules.yml"]\n' + scrape)
    checked = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "2 rules found" in checked.stdout
    shutil.copy(RULES_TEST, tmp_path / "rules_test.yml")
    tested = promtool("test", "rules", str(tmp_path / "rules_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_real_scrape_passes_promtools_lint(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(
        tmp_path / "site", emulator.base_url, metrics={"listen": "127.0.0.1:0"}, watch={"settle_seconds": 0}
    )
    project.drop("lint.csv", csv_text(["extended_id", "x"], [(f"LINT{i:08d}", "v") for i in range(5)]))
    settings = load_settings(project.config, env={"SCM_API__TOKEN": TOKEN})
    project.ledger.parent.mkdir(parents=True)
    for folder in (project.outbox, project.archive, project.failed):
        folder.mkdir()
    service = Service.from_settings(settings)
    service.telemetry.open()
    try:
        service.start()
        for _ in range(1000):
            service.turn()
            if (project.outbox / "lint.summary.json").exists() and service.idle():
                break
        assert service.telemetry.server is not None
        text = requests.get(f"http://127.0.0.1:{service.telemetry.server.port}/metrics", timeout=10).text
    finally:
        service.events.stop()
        service.telemetry.close()
        service.uploader.close()
        service.ledger.close()
    assert 'scm_daemon_rows{status="uploaded"} 5.0' in text
    linted = promtool("check", "metrics", stdin=text)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert linted.stdout.strip() == "", linted.stdout  # no naming or unit complaints
