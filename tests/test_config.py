"""Tests for daemon.config: defaults, validation, sources and their order, paths, token, config file lookup."""

import io
import json
import logging
import os
from pathlib import Path

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import (
    ConfigError,
    Settings,
    find_config_file,
    load_settings,
    sandbox_settings,
)
from daemon.logs import configure_logging

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
TOKEN = "tok-9f8e7d6c5b4a"  # a fake token; every test checks it never leaks


def write(folder: Path, text: str, name: str = "config.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def load(folder: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(write(folder, text), env=env or {})


def error_of(folder: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(folder, text, env)
    return str(caught.value)


# --- defaults and the example file ---------------------------------------------------------------


def test_example_file_loads_and_gives_the_defaults() -> None:
    loaded = load_settings(EXAMPLE, env={})
    defaults = Settings()
    assert loaded.model_dump(exclude={"paths", "source"}) == defaults.model_dump(exclude={"paths", "source"})
    assert loaded.source == EXAMPLE
    assert loaded.paths.inbox == EXAMPLE.parent / "inbox"
    assert loaded.paths.ledger == EXAMPLE.parent / "ledger.sqlite3"


def test_defaults_match_the_design() -> None:
    s = Settings()
    assert s.api.base_url == "https://api.scantrust.com"
    assert (s.api.connect_timeout, s.api.read_timeout) == (10, 90)
    assert (s.api.requests_per_second, s.api.max_in_flight) == (8, 8)
    assert (s.upload.mode, s.upload.data_key, s.upload.empty_cells) == ("auto", "extended_id", "skip")
    assert (s.upload.sync_batch_size, s.upload.async_batch_size) == (100, 1000)
    assert s.upload.fields == []
    assert s.upload.fields_template == ""
    assert not s.upload.strict_fields
    assert s.intake.sheet == ""
    assert s.columns == {}
    assert (s.watch.settle_seconds, s.watch.rescan_seconds, s.watch.polling) == (2, 30, False)
    assert s.watch.ignore == [".*", "~$*", "*.tmp", "*.part", "*.crdownload"]
    assert (s.poll.interval_seconds, s.poll.max_interval_seconds, s.poll.timeout_seconds) == (5, 60, 86400)
    assert (s.retry.max_attempts, s.retry.base_delay_seconds, s.retry.max_delay_seconds) == (8, 2, 300)


def test_bare_settings_ignore_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCM_UPLOAD__MODE", "sync")
    assert Settings().upload.mode == "auto"


def test_without_a_file_paths_are_relative_to_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(None, env={})
    assert s.source is None
    assert s.paths.inbox == tmp_path / "inbox"
    assert s.paths.failed == tmp_path / "failed"
    assert s.paths.ledger == tmp_path / "ledger.sqlite3"
    assert s.api.token is None


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load(tmp_path, "")
    with pytest.raises(ValueError, match="frozen"):
        s.upload.mode = "sync"  # type: ignore[misc]


def test_fractional_durations_and_rates_are_accepted(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        """
        [api]
        connect_timeout = 2.5
        requests_per_second = 9.5
        [watch]
        settle_seconds = 0.5
        rescan_seconds = 0.25
        [poll]
        interval_seconds = 0.1
        max_interval_seconds = 1.5
        timeout_seconds = 3600.5
        [retry]
        base_delay_seconds = 0.01
        max_delay_seconds = 0.5
        """,
    )
    assert s.api.connect_timeout == 2.5
    assert s.api.requests_per_second == 9.5
    assert s.watch.settle_seconds == 0.5
    assert s.watch.rescan_seconds == 0.25
    assert s.poll.interval_seconds == 0.1
    assert s.poll.timeout_seconds == 3600.5
    assert s.retry.base_delay_seconds == 0.01


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=1e-6, max_value=1e7, allow_nan=False))
def test_any_positive_duration_from_the_environment_round_trips(value: float) -> None:
    s = load_settings(None, env={"SCM_WATCH__SETTLE_SECONDS": repr(value), "SCM_POLL__TIMEOUT_SECONDS": repr(value)})
    assert s.watch.settle_seconds == value
    assert s.poll.timeout_seconds == value


# --- validation: one row per rule ----------------------------------------------------------------

BAD_VALUES = [
    ("api", "base_url", '"ftp://example.com"', "http(s) URL"),
    ("api", "base_url", '"api.scantrust.com"', "http(s) URL"),
    ("api", "base_url", '"http://api.scantrust.com"', "must use https://"),
    ("api", "base_url", '"https://api.scantrust.com/?x=1"', "query"),
    ("api", "connect_timeout", "0", "greater than 0"),
    ("api", "connect_timeout", "-1.5", "greater than 0"),
    ("api", "read_timeout", "0", "greater than 0"),
    ("api", "read_timeout", '"slow"', "must be a number"),
    ("api", "requests_per_second", "0", "greater than 0"),
    ("api", "requests_per_second", "-2", "greater than 0"),
    ("api", "max_in_flight", "0", "at least 1"),
    ("api", "max_in_flight", "2.5", "whole number"),
    ("api", "token_file", "5", "text in quotes"),
    ("upload", "mode", '"fast"', "'sync', 'async' or 'auto'"),
    ("upload", "data_key", '"sku"', "'extended_id' or 'serial_number'"),
    ("upload", "sync_batch_size", "0", "at least 1"),
    ("upload", "sync_batch_size", "101", "at most 100"),
    ("upload", "async_batch_size", "0", "at least 1"),
    ("upload", "async_batch_size", "1001", "at most 1000"),
    ("upload", "empty_cells", '"zero"', "'skip' or 'clear'"),
    ("upload", "fields", '"batch"', "must be a list"),
    ("upload", "fields", '["batch", " "]', "entries must not be empty"),
    ("upload", "strict_fields", '"maybe"', "true or false"),
    ("intake", "sheet", "3", "text in quotes"),
    ("paths", "inbox", '""', "must not be empty"),
    ("paths", "ledger", '"  "', "must not be empty"),
    ("watch", "settle_seconds", "-0.5", "at least 0"),
    ("watch", "rescan_seconds", "0", "greater than 0"),
    ("watch", "polling", '"sometimes"', "true or false"),
    ("watch", "ignore", '["*.tmp", ""]', "entries must not be empty"),
    ("poll", "interval_seconds", "0", "greater than 0"),
    ("poll", "max_interval_seconds", "-1", "greater than 0"),
    ("poll", "timeout_seconds", "inf", "finite number"),
    ("poll", "timeout_seconds", "nan", "finite number"),
    ("retry", "max_attempts", "0", "at least 1"),
    ("retry", "max_attempts", "1.5", "whole number"),
    ("retry", "base_delay_seconds", "0", "greater than 0"),
    ("retry", "max_delay_seconds", "-300", "greater than 0"),
]


@pytest.mark.parametrize(("section", "key", "value", "rule"), BAD_VALUES)
def test_a_bad_value_in_the_file_names_file_key_value_and_rule(
    tmp_path: Path, section: str, key: str, value: str, rule: str
) -> None:
    message = error_of(tmp_path, f"[{section}]\n{key} = {value}\n")
    assert str(tmp_path / "config.toml") in message
    assert f"{section}.{key}" in message
    assert rule in message
    shown = value.strip('"').strip() or '""'
    assert shown in message or value in message


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("upload", "sync_batch_size", "1"),
        ("upload", "sync_batch_size", "100"),
        ("upload", "async_batch_size", "1"),
        ("upload", "async_batch_size", "1000"),
        ("watch", "settle_seconds", "0"),
        ("retry", "max_attempts", "1"),
        ("api", "base_url", '"http://127.0.0.1:8080"'),
        ("api", "base_url", '"http://localhost:9000/"'),
        ("api", "base_url", '"https://api.staging.scantrust.io"'),
    ],
)
def test_boundary_values_are_accepted(tmp_path: Path, section: str, key: str, value: str) -> None:
    s = load(tmp_path, f"[{section}]\n{key} = {value}\n")
    assert getattr(getattr(s, section), key) is not None


@pytest.mark.parametrize("path", ["/api/v2/", "/api/v2", "/api"])
def test_base_url_with_a_path_is_refused_with_the_fix(tmp_path: Path, path: str) -> None:
    message = error_of(tmp_path, f'[api]\nbase_url = "https://api.staging.scantrust.io{path}"\n')
    assert str(tmp_path / "config.toml") in message
    assert f"api.base_url must be the host only, e.g. https://api.scantrust.com; drop '{path}'" in message


def test_base_url_with_a_path_from_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env={"SCM_API__BASE_URL": "https://api.staging.scantrust.io/api/v2/"})
    assert "SCM_API__BASE_URL" in str(caught.value)
    assert "drop '/api/v2/'" in str(caught.value)


def test_base_url_loses_its_trailing_slash(tmp_path: Path) -> None:
    assert load(tmp_path, '[api]\nbase_url = "https://api.staging.scantrust.io/"\n').api.base_url == (
        "https://api.staging.scantrust.io"
    )


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            "[poll]\ninterval_seconds = 10\nmax_interval_seconds = 5\n",
            ["[poll]", "max_interval_seconds (5) must be at least interval_seconds (10)"],
        ),
        (
            "[retry]\nbase_delay_seconds = 30\nmax_delay_seconds = 2.5\n",
            ["[retry]", "max_delay_seconds (2.5) must be at least base_delay_seconds (30)"],
        ),
        ('[paths]\ninbox = "drop"\noutbox = "./drop"\n', ["paths.outbox and paths.inbox are both"]),
        ('[paths]\narchive = "a"\nfailed = "x/../a"\n', ["paths.failed and paths.archive"]),
        ("[upload]\nstrict_fields = true\n", ["upload.strict_fields = true needs upload.fields"]),
        (
            '[upload]\nfields = ["intended_market"]\n[columns]\n"Market" = "intended_markt"\n',
            ['columns."Market" = "intended_markt"', "did you mean 'intended_market'?"],
        ),
        ('[columns]\n"Serial No." = ""\n', ["[columns]", "'Serial No.'"]),
    ],
)
def test_rules_across_keys(tmp_path: Path, text: str, fragments: list[str]) -> None:
    message = error_of(tmp_path, text)
    assert str(tmp_path / "config.toml") in message
    for fragment in fragments:
        assert fragment in message


def test_every_bad_value_is_reported_at_once(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[upload]\nmode = "fast"\nsync_batch_size = 500\n[watch]\nrescan_seconds = 0\n')
    assert len(message.splitlines()) == 3


def test_columns_map_headings_to_field_keys(tmp_path: Path) -> None:
    s = load(tmp_path, '[columns]\n" Serial No. " = "serial_number"\n"Market" = "intended_market"\n')
    assert s.columns == {"Serial No.": "serial_number", "Market": "intended_market"}


# --- unknown names and malformed files -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[upload]\nsync_batchsize = 5\n", ["unknown key 'upload.sync_batchsize'", "did you mean 'sync_batch_size'?"]),
        ("[uplaod]\nmode = 'sync'\n", ["unknown section [uplaod]", "did you mean 'upload'?"]),
        ("[watch]\ninterval_seconds = 5\n", ["unknown key 'watch.interval_seconds'", "it belongs in [poll]"]),
        ("[watch]\nzzz = 1\n", ["unknown key 'watch.zzz'"]),
        ('mode = "sync"\n', ["key 'mode' is outside any section", "under [upload]"]),
        ("api = 5\n", ["'api' must be a section"]),
    ],
)
def test_unknown_names_in_the_file(tmp_path: Path, text: str, fragments: list[str]) -> None:
    message = error_of(tmp_path, text)
    assert str(tmp_path / "config.toml") in message
    for fragment in fragments:
        assert fragment in message


def test_a_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[api]\nbase_url = "https://x"\nconnect_timeout = = 3\n')
    assert str(tmp_path / "config.toml") in message
    assert "not valid TOML" in message
    assert "line 3" in message


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[intake]\nsheet = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_settings(path, env={})


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_settings(tmp_path / "nope.toml", env={})


# --- the environment -------------------------------------------------------------------------------


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        '[upload]\nmode = "async"\nsync_batch_size = 50\n[watch]\npolling = false\n',
        env={
            "SCM_UPLOAD__MODE": "sync",
            "SCM_WATCH__POLLING": "true",
            "SCM_WATCH__IGNORE": '["*.bak"]',
            "SCM_API__READ_TIMEOUT": "61.5",
        },
    )
    assert s.upload.mode == "sync"
    assert s.upload.sync_batch_size == 50  # from the file: the env only overrides what it names
    assert s.watch.polling is True
    assert s.watch.ignore == ["*.bak"]
    assert s.api.read_timeout == 61.5


def test_environment_names_are_case_insensitive_and_sections_may_be_json(tmp_path: Path) -> None:
    s = load_settings(
        None, env={"scm_upload__Mode": "sync", "SCM_COLUMNS": json.dumps({"Serial No.": "serial_number"})}
    )
    assert s.upload.mode == "sync"
    assert s.columns == {"Serial No.": "serial_number"}


def test_a_json_section_in_the_environment_merges_with_the_files_table(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        '[columns]\n"Lot" = "batch"\n"Serial No." = "extended_id"\n',
        env={"SCM_COLUMNS": json.dumps({"Serial No.": "serial_number"}), "SCM_COLUMNS__sku": "product_sku"},
    )
    assert s.columns == {"Lot": "batch", "Serial No.": "serial_number", "sku": "product_sku"}


def test_configuration_loading_uses_only_public_pydantic_settings_api() -> None:
    # The loader reads the file and the environment itself and hands Settings plain values; it subclasses no
    # settings source, so no private method of pydantic-settings (which a minor release may change) is overridden.
    from daemon.config import loading

    text = Path(loading.__file__).read_text(encoding="utf-8")
    assert "pydantic_settings" not in text
    assert "SettingsSource" not in text


def test_unrelated_scm_variables_are_left_alone() -> None:
    s = load_settings(None, env={"SCM_CONFIG": "/nowhere", "SCM_REVISION": "abc", "SCM_SOURCE": "elsewhere.toml"})
    assert s.source is None


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"SCM_UPLOAD__SYNC_BATCH_SIZE": "300"}, ["environment variable SCM_UPLOAD__SYNC_BATCH_SIZE", "at most 100"]),
        ({"SCM_WATCH__POLLING": "perhaps"}, ["SCM_WATCH__POLLING", "true or false"]),
        ({"SCM_UPLOAD__SYNC_BATCHSIZE": "5"}, ["SCM_UPLOAD__SYNC_BATCHSIZE", "did you mean 'sync_batch_size'?"]),
        ({"SCM_UPLAOD__MODE": "sync"}, ["SCM_UPLAOD__MODE", "unknown section 'uplaod'", "did you mean 'upload'?"]),
        ({"SCM_UPLOAD__FIELDS": "a,b"}, ["SCM_UPLOAD__FIELDS", "JSON list"]),
        ({"SCM_WATCH__IGNORE": '"*.bak"'}, ["watch.ignore", "must be a list"]),
        ({"SCM_COLUMNS": "[1]"}, ["SCM_COLUMNS", "JSON table"]),
        ({"SCM_POLL__INTERVAL_SECONDS": "90"}, ["environment variable SCM_POLL__INTERVAL_SECONDS", "[poll]"]),
    ],
)
def test_a_bad_environment_variable_is_named(tmp_path: Path, env: dict[str, str], fragments: list[str]) -> None:
    message = error_of(tmp_path, "[upload]\n", env)
    for fragment in fragments:
        assert fragment in message


def test_a_bad_value_from_the_file_is_not_blamed_on_the_environment(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[upload]\nsync_batch_size = 500\n", {"SCM_UPLOAD__MODE": "sync"})
    assert message.startswith(str(tmp_path / "config.toml"))
    assert "environment" not in message


# --- paths -----------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.chdir(tmp_path)  # the cwd must not matter
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(
        etc,
        '[paths]\ninbox = "in"\noutbox = "../share/out"\narchive = "/srv/archive"\nfailed = "~/failed"\n',
    )
    s = load_settings(path, env={"SCM_PATHS__LEDGER": "db/ledger.sqlite3"})
    assert s.paths.inbox == etc / "in"
    assert s.paths.outbox == tmp_path / "share" / "out"
    assert s.paths.archive == Path("/srv/archive")
    assert s.paths.failed == tmp_path / "home" / "failed"
    assert s.paths.ledger == etc / "db" / "ledger.sqlite3"
    assert all(p.is_absolute() for p in s.paths.model_dump().values() if p is not None)
    assert not (etc / "in").exists()  # loading creates nothing


def test_a_relative_config_path_still_gives_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", '[paths]\ninbox = "in"\n')
    monkeypatch.chdir(tmp_path)
    s = load_settings(Path("conf/config.toml"), env={})
    assert s.paths.inbox == tmp_path / "conf" / "in"


# --- fields_template -------------------------------------------------------------------------------


def test_fields_template_header_merges_into_fields(tmp_path: Path) -> None:
    (tmp_path / "campaign").mkdir()
    (tmp_path / "campaign" / "template.csv").write_text(
        "\ufeffextended_id;batch;intended_market;production_date\n", encoding="utf-8"
    )
    s = load(tmp_path, '[upload]\nfields = ["po_number", "batch"]\nfields_template = "campaign/template.csv"\n')
    assert s.upload.fields == ["po_number", "batch", "intended_market", "production_date"]
    assert s.upload.fields_template == str(tmp_path / "campaign" / "template.csv")


def test_strict_fields_is_satisfied_by_a_template(tmp_path: Path) -> None:
    write(tmp_path, "serial_number,lot\n", name="template.csv")
    s = load(tmp_path, '[upload]\nstrict_fields = true\nfields_template = "template.csv"\n')
    assert s.upload.fields == ["lot"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "cannot read"), ("extended_id\n", "no field keys"), ("", "no field keys")],
)
def test_a_bad_fields_template_is_named(tmp_path: Path, content: str | None, fragment: str) -> None:
    if content is not None:
        write(tmp_path, content, name="template.csv")
    message = error_of(tmp_path, '[upload]\nfields_template = "template.csv"\n')
    assert "upload.fields_template" in message
    assert str(tmp_path / "template.csv") in message
    assert fragment in message


# --- the token -------------------------------------------------------------------------------------


def test_token_from_the_environment_is_stripped_and_secret(tmp_path: Path) -> None:
    s = load(tmp_path, "", env={"SCM_API__TOKEN": f"  {TOKEN}\n"})
    assert s.api.token is not None
    assert s.api.token.get_secret_value() == TOKEN
    assert s.api.require_token() == TOKEN
    assert TOKEN not in str(s)
    assert TOKEN not in repr(s)
    assert TOKEN not in repr(s.api)
    assert TOKEN not in s.model_dump_json()


def test_token_from_token_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    write(tmp_path / "secrets", f"{TOKEN}\n", name="token")
    s = load(tmp_path, '[api]\ntoken_file = "secrets/token"\n')
    assert s.api.require_token() == TOKEN
    assert s.api.token_file == str(tmp_path / "secrets" / "token")


def test_token_from_the_systemd_credential(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds, TOKEN, name="scantrust-token")
    s = load(tmp_path, "", env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert s.api.require_token() == TOKEN


def test_token_sources_in_order(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds, "from-credential", name="scantrust-token")
    write(tmp_path, "from-file", name="token")
    text = '[api]\ntoken_file = "token"\n'
    env = {"CREDENTIALS_DIRECTORY": str(creds), "SCM_API__TOKEN": "from-env"}
    assert load(tmp_path, text, env).api.require_token() == "from-env"
    del env["SCM_API__TOKEN"]
    assert load(tmp_path, text, env).api.require_token() == "from-file"
    assert load(tmp_path, "", env).api.require_token() == "from-credential"


def test_no_token_is_allowed_until_one_is_required(tmp_path: Path) -> None:
    empty_creds = tmp_path / "creds"
    empty_creds.mkdir()
    s = load(tmp_path, "", env={"CREDENTIALS_DIRECTORY": str(empty_creds)})
    assert s.api.token is None
    with pytest.raises(ConfigError, match=r"SCM_API__TOKEN.*token_file.*scantrust-token"):
        s.api.require_token()


def test_a_token_written_in_the_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    message = error_of(tmp_path, f'[api]\ntoken = "{TOKEN}"\n')
    assert "api.token must not be written in the config file" in message
    assert "token_file" in message
    assert "SCM_API__TOKEN" in message
    assert TOKEN not in message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "cannot read the token file"), ("  \n", "is empty"), (f"UAT {TOKEN}\n", "whitespace inside")],
)
def test_a_bad_token_file_is_named_and_never_echoed(tmp_path: Path, content: str | None, fragment: str) -> None:
    if content is not None:
        write(tmp_path, content, name="token")
    message = error_of(tmp_path, '[api]\ntoken_file = "token"\n')
    assert str(tmp_path / "token") in message
    assert fragment in message
    assert TOKEN not in message


def test_an_unreadable_token_file_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "token"  # a folder where a file should be: unreadable, even for root
    folder.mkdir()
    message = error_of(tmp_path, '[api]\ntoken_file = "token"\n')
    assert "cannot read the token file" in message
    assert str(folder) in message


def test_an_empty_token_in_the_environment_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, "", {"SCM_API__TOKEN": "   "})
    assert "SCM_API__TOKEN is empty" in message


def test_errors_never_contain_the_token(tmp_path: Path) -> None:
    env = {"SCM_API__TOKEN": TOKEN, "SCM_API": json.dumps({"tokn": TOKEN})}
    message = error_of(tmp_path, "[upload]\nsync_batch_size = 500\n", env)
    assert TOKEN not in message
    message = error_of(tmp_path, "", {"SCM_API": json.dumps({"token": 12345678})})
    assert "12345678" not in message


def test_a_loaded_token_is_redacted_from_logs(tmp_path: Path) -> None:
    secret = "tok-only-in-this-test-31337"
    load(tmp_path, "", env={"SCM_API__TOKEN": secret})
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(json=True, stream=stream)
    try:
        structlog.get_logger("test").info("token_seen", token=secret)
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
    assert secret not in stream.getvalue()
    assert '"token": "***"' in stream.getvalue()


# --- sandbox ---------------------------------------------------------------------------------------


def test_sandbox_settings_use_the_emulator_and_cwd_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = sandbox_settings(None, base_url="http://127.0.0.1:8765", token="sandbox", env={"SCM_API__TOKEN": TOKEN})
    assert s.api.base_url == "http://127.0.0.1:8765"
    assert s.api.require_token() == "sandbox"
    assert (s.paths.inbox, s.paths.outbox) == (tmp_path / "inbox", tmp_path / "outbox")
    assert (s.paths.archive, s.paths.failed) == (tmp_path / "archive", tmp_path / "failed")
    assert s.paths.ledger == tmp_path / "ledger.sqlite3"


def test_sandbox_settings_keep_the_file_but_never_read_the_real_token(tmp_path: Path) -> None:
    path = write(tmp_path, '[api]\ntoken_file = "missing-token"\n[upload]\nmode = "sync"\n')
    s = sandbox_settings(path, base_url="http://localhost:1234", token="sandbox", env={})
    assert s.upload.mode == "sync"
    assert s.api.require_token() == "sandbox"
    assert s.source == path


# --- find_config_file ------------------------------------------------------------------------------


def test_find_config_file_order(tmp_path: Path) -> None:
    cwd, other = tmp_path / "cwd", tmp_path / "other"
    cwd.mkdir()
    other.mkdir()
    system = write(other, "", name="system.toml")
    cli = write(other, "", name="cli.toml")
    from_env = write(other, "", name="env.toml")
    local = write(cwd, "")
    env = {"SCM_CONFIG": str(from_env)}
    assert find_config_file(str(cli), env, cwd, system=system) == cli
    assert find_config_file(None, env, cwd, system=system) == from_env
    assert find_config_file(None, {}, cwd, system=system) == local
    local.unlink()
    assert find_config_file(None, {"SCM_CONFIG": ""}, cwd, system=system) == system
    assert find_config_file(None, {}, cwd, system=other / "absent.toml") is None


def test_find_config_file_resolves_a_relative_cli_path_against_cwd(tmp_path: Path) -> None:
    write(tmp_path, "", name="mine.toml")
    assert find_config_file("mine.toml", {}, tmp_path) == tmp_path / "mine.toml"


@pytest.mark.parametrize(
    ("cli", "env", "fragment"),
    [
        ("missing.toml", {}, "(given with -c) does not exist"),
        (".", {}, "is a folder"),
        (None, {"SCM_CONFIG": "missing.toml"}, "fix or unset SCM_CONFIG"),
    ],
)
def test_find_config_file_refuses_what_was_named_but_is_not_there(
    tmp_path: Path, cli: str | None, env: dict[str, str], fragment: str
) -> None:
    write(tmp_path, "")  # a ./config.toml that must not be used instead
    with pytest.raises(ConfigError, match=r"config file .*") as caught:
        find_config_file(cli, env, tmp_path, system=tmp_path / "none.toml")
    assert fragment in str(caught.value)


def test_find_config_file_defaults_to_the_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCM_CONFIG", str(write(tmp_path, "", name="x.toml")))
    assert find_config_file(None) == tmp_path / "x.toml"
    assert os.environ["SCM_CONFIG"]  # untouched
