"""paths.ledger as a file or a PostgreSQL URL: the password from a file or systemd credential, never in the
configuration and never shown."""

from pathlib import Path

import pytest

from daemon.config import ConfigError, load_settings
from daemon.ledger.dialect import LedgerTargetError, ledger_target

SECRET = "s3cr3t-ledger-pw"


def settings_with(tmp_path: Path, ledger: str, extra: str = "") -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\nledger = "{ledger}"\n{extra}', encoding="utf-8")
    return config


def test_a_file_path_is_a_sqlite_ledger_relative_to_the_config(tmp_path: Path) -> None:
    target = load_settings(settings_with(tmp_path, "db/ledger.sqlite3"), env={}).paths.ledger_target()
    assert (target.sqlite, target.path, target.shown) == (True, tmp_path / "db" / "ledger.sqlite3", target.shown)
    assert target.shown == str(tmp_path / "db" / "ledger.sqlite3")


def test_a_url_is_a_postgresql_ledger_on_psycopg_with_the_password_from_its_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(SECRET + "\n", encoding="utf-8")
    config = settings_with(tmp_path, "postgresql://scm@db.example:5432/ledger", 'ledger_password_file = "pw"\n')
    paths = load_settings(config, env={}).paths
    assert paths.ledger == "postgresql://scm@db.example:5432/ledger"
    assert paths.ledger_file is None
    assert paths.ledger_password_file == tmp_path / "pw"
    target = paths.ledger_target()
    assert target.url.drivername == "postgresql+psycopg"
    assert target.url.password == SECRET
    assert target.shown == "postgresql://scm:***@db.example:5432/ledger"
    assert SECRET not in str(target)
    assert SECRET not in repr(target)


def test_the_systemd_credential_is_the_password_when_no_file_is_set(tmp_path: Path) -> None:
    (tmp_path / "ledger-password").write_text(SECRET, encoding="utf-8")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert ledger_target("postgresql://scm@h/db", None, env).url.password == SECRET
    assert ledger_target("postgresql://scm@h/db", None, {}).url.password is None  # trust, peer or a certificate


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (f"postgresql://scm:{SECRET}@h/db", "must not contain the password"),
        ("postgresql://scm@h", "names no database"),
    ],
)
def test_a_url_with_a_password_or_no_database_is_refused_without_echoing_it(
    tmp_path: Path, value: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        load_settings(settings_with(tmp_path, value), env={})
    assert SECRET not in str(caught.value)


def test_an_unreadable_password_file_is_a_plain_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerTargetError, match="cannot read the ledger's password file"):
        ledger_target("postgresql://scm@h/db", tmp_path / "missing")
