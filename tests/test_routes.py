"""Routes: route keys checked at load, the deepest route picks a file's settings, and the scan of subfolders."""

import os
from pathlib import Path, PurePosixPath

import pytest
import xlsxwriter
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from daemon import intake
from daemon.config import ConfigError, Settings, load_settings
from daemon.config.routes import route_of, route_overview, settings_for
from daemon.folders import remove_leftover_temps
from daemon.ledger import Ledger
from daemon.watcher import InboxScanner

IGNORE = [".*", "~$*", "*.tmp", "*.part", "*.crdownload"]


def load(tmp_path: Path, text: str, **env: str) -> Settings:
    (tmp_path / "inbox").mkdir(exist_ok=True)
    config = tmp_path / "config.toml"
    config.write_text(text, encoding="utf-8")
    return load_settings(config, env=env)


def refused(tmp_path: Path, text: str, **env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, **env)
    return str(caught.value)


# --- configuration -----------------------------------------------------------------------------------------


def test_a_route_overrides_upload_intake_and_columns_for_its_folder_only(tmp_path: Path) -> None:
    (tmp_path / "campaign-b.csv").write_text("serial_number;colour;size\n", encoding="utf-8")
    settings = load(
        tmp_path,
        """
[upload]
fields = ["batch", "market"]
[columns]
"Lot" = "batch"

[routes."LineA"]
data_key = "serial_number"
mode = "sync"
sheet = "Codes"
empty_cells = "clear"
[routes."LineA".columns]
"Code" = "serial_number"

[routes."LineB/Station 2"]
fields_template = "campaign-b.csv"
strict_fields = true
""",
    )
    line_a = settings_for(settings, "LineA/deeper/x.xlsx")
    assert (line_a.upload.data_key, line_a.upload.mode, line_a.upload.empty_cells) == ("serial_number", "sync", "clear")
    assert line_a.intake.sheet == "Codes"
    assert line_a.upload.fields == ["batch", "market"]  # not overridden: the top level's
    assert line_a.columns == {"Lot": "batch", "Code": "serial_number"}  # added to the top level's
    station = settings_for(settings, "LineB/Station 2/y.csv")
    # The route's template (relative to the config file) is its campaign's field list, not added to the top's.
    assert station.upload.fields == ["colour", "size"]
    assert station.upload.fields_template == str(tmp_path / "campaign-b.csv")
    assert station.upload.strict_fields
    for elsewhere in ("top.csv", "LineB/y.csv", "LineAB/x.csv", "Other/LineA/x.csv"):
        assert settings_for(settings, elsewhere) is settings  # a folder named in no route: the top level


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('[routes."../elsewhere"]', "[routes.\"../elsewhere\"] '..' would leave the inbox"),
        ('[routes."/srv/other"]', '[routes."/srv/other"] is outside the inbox'),
        ('[routes."LineA/"]', 'write it as [routes."LineA"]'),
        ('[routes."."]', "names the inbox itself, whose files use the top-level settings"),
        ('[routes."Line\\\\A"]', "write folders with '/' between them"),
        ('[routes.".processing"]', "files in folder '.processing' are never taken (hidden folders are never scanned)"),
        ('[routes."A/old.tmp"]', "folder 'old.tmp' are never taken (it matches the watch.ignore pattern '*.tmp')"),
        ('[routes."A"]\ndata_kye = "serial_number"', 'routes."A".data_kye is not a key a route may set; did you '),
        ('[routes."A"]\nsettle_seconds = 1', 'routes."A".settle_seconds watch.settle_seconds applies to the whole'),
        ('[routes."A"]\nmax_rows = 10', "intake.max_rows applies to the whole service; set it in [intake]"),
        ('[routes."A"]\nmode = "fast"', "routes.\"A\".mode = \"fast\" is not valid: must be one of 'sync', 'async'"),
        ('[routes."A"]\nsync_batch_size = 500', 'routes."A".sync_batch_size = 500 is not valid: must be at most 100'),
        ("[routes]\nA = 3", '[routes."A"] must be a table of settings'),
        ('[routes."A"]\nstrict_fields = true', "needs upload.fields or upload.fields_template"),
        ('[routes."A"]\nfields = ["x"]\n[routes."A".columns]\n"Lot" = "batch"', 'columns."Lot" = "batch" is unknown'),
    ],
)
def test_a_bad_route_is_refused_at_load_naming_the_key_and_the_fix(tmp_path: Path, table: str, expected: str) -> None:
    message = refused(tmp_path, table)
    assert expected in message
    assert message.startswith(str(tmp_path / "config.toml"))


def test_an_absolute_route_inside_the_inbox_is_refused_with_its_relative_form(tmp_path: Path) -> None:
    message = refused(tmp_path, f'[routes."{tmp_path / "inbox" / "LineA"}"]\nmode = "sync"')
    assert 'write it relative to the inbox: [routes."LineA"]' in message


def test_routes_come_from_the_environment_as_one_json_value(tmp_path: Path) -> None:
    settings = load(tmp_path, "", SCM_ROUTES='{"LineA": {"mode": "sync", "columns": {"Code": "extended_id"}}}')
    assert settings_for(settings, "LineA/x.csv").upload.mode == "sync"
    assert settings_for(settings, "LineA/x.csv").columns == {"Code": "extended_id"}
    message = refused(tmp_path, "", SCM_ROUTES__LINEA__MODE="sync")
    assert "SCM_ROUTES__LINEA__MODE: routes are set as a whole, in JSON" in message


def test_check_lists_each_route_with_its_folder_and_overrides(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        '[routes."LineA"]\nmode = "sync"\n[routes."LineB/Station 2"]\ndata_key = "serial_number"\n',
    )
    (tmp_path / "inbox" / "LineA").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "inbox" / "LineB").symlink_to(tmp_path / "elsewhere")
    lines = route_overview(settings)
    assert lines[0].startswith("route: files directly in the inbox, and in folders no route names: (top level)")
    assert lines[1] == f"route: {tmp_path}/inbox/LineA/ takes routes.\"LineA\": mode = 'sync'"
    assert lines[2].startswith(
        f"route: {tmp_path}/inbox/LineB/Station 2/ (WARNING: {tmp_path}/inbox/LineB is a symlink, which the scan "
        "does not follow; make it a real folder) takes routes.\"LineB/Station 2\": data_key = 'serial_number'"
    )


# --- the deepest route wins (pure) ------------------------------------------------------------------------

folder_part = st.sampled_from(["A", "B", "LineA", "Station 2", "x"])
folders = st.lists(folder_part, min_size=1, max_size=4).map("/".join)


@given(routes=st.sets(folders, max_size=6), folder=st.lists(folder_part, max_size=5), file=st.just("f.csv"))
def test_the_deepest_route_among_a_files_folders_wins(routes: set[str], folder: list[str], file: str) -> None:
    name = "/".join([*folder, file])
    ancestors = {"/".join(folder[:i]) for i in range(1, len(folder) + 1)}
    chosen = route_of(routes, name)
    matching = routes & ancestors
    if not matching:
        assert chosen is None
    else:
        assert chosen in matching
        assert all(len(PurePosixPath(chosen).parts) >= len(PurePosixPath(m).parts) for m in matching)


def test_a_route_is_a_whole_folder_name_not_a_prefix() -> None:
    assert route_of(["Line"], "LineA/x.csv") is None
    assert route_of(["Line", "Line/A"], "Line/A/B/x.csv") == "Line/A"
    assert route_of(["Line"], "Line.csv") is None  # a file beside the folder, not in it


# --- the scan of subfolders ---------------------------------------------------------------------------------


def write(path: Path, text: str = "extended_id\nCODE00000001\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_files_in_subfolders_at_any_depth_are_found_except_hidden_and_ignored_folders(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    wanted = [write(inbox / "top.csv"), write(inbox / "LineA" / "a.csv"), write(inbox / "LineA" / "B" / "C" / "d.csv")]
    write(inbox / ".processing" / "3-claimed.csv")  # the service's own claims
    write(inbox / ".snapshot" / "old.csv")  # a share's hidden folder
    write(inbox / "copy.tmp" / "inside.csv")  # watch.ignore applies to every path part
    write(inbox / "LineA" / "~$a.xlsx", "lock")
    write(inbox / "Archive 2025" / "old.csv")
    scanner = InboxScanner(inbox, settle_seconds=1, ignore=[*IGNORE, "Archive *"])
    assert scanner.scan(0.0, claimed=()) == []
    assert sorted(scanner.scan(1.0, claimed=())) == sorted(wanted)


def test_hidden_folders_stay_unscanned_even_without_the_dot_pattern(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    wanted = write(inbox / "LineA" / ".dotted.csv")  # a hidden *file* follows watch.ignore, as at the top
    write(inbox / ".processing" / "3-claimed.csv")
    scanner = InboxScanner(inbox, settle_seconds=0, ignore=["*.tmp"])
    scanner.scan(0.0, claimed=())
    assert scanner.scan(1.0, claimed=()) == [wanted]


def test_a_symlinked_folder_is_not_followed_and_said_once(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    outside = tmp_path / "elsewhere"
    write(outside / "secret.csv")
    inbox.mkdir()
    (inbox / "LineA").mkdir()
    (inbox / "LineA" / "shared").symlink_to(outside, target_is_directory=True)
    (inbox / "loop").symlink_to(inbox, target_is_directory=True)  # would go round for ever if followed
    good = write(inbox / "LineA" / "good.csv")
    scanner = InboxScanner(inbox, settle_seconds=0, ignore=IGNORE)
    with capture_logs() as logs:
        for now in (0.0, 1.0, 2.0):
            found = scanner.scan(now, claimed=())
    assert found == [good]
    warned = sorted((e["file"], e["kind"]) for e in logs if e["event"] == "inbox_entry_ignored")
    assert warned == [
        ("LineA/shared", "symlink to a folder (not followed)"),
        ("loop", "symlink to a folder (not followed)"),
    ]


def test_an_unreadable_subfolder_is_said_once_and_the_rest_is_scanned(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every folder whatever its mode")
    inbox = tmp_path / "inbox"
    locked = inbox / "Locked"
    write(locked / "x.csv")
    good = write(inbox / "LineA" / "good.csv")
    locked.chmod(0)
    try:
        scanner = InboxScanner(inbox, settle_seconds=0, ignore=IGNORE)
        with capture_logs() as logs:
            scanner.scan(0.0, claimed=())
            assert scanner.scan(1.0, claimed=()) == [good]
    finally:
        locked.chmod(0o755)
    assert [(e["event"], e["file"]) for e in logs if e["log_level"] == "warning"] == [
        ("inbox_folder_unreadable", "Locked")
    ]


def test_a_file_moved_to_another_folder_while_settling_settles_anew_there(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    first = write(inbox / "LineA" / "x.csv")
    (inbox / "LineB").mkdir()
    scanner = InboxScanner(inbox, settle_seconds=2, ignore=IGNORE)
    assert scanner.scan(0.0, claimed=()) == []
    moved = first.rename(inbox / "LineB" / "x.csv")  # same size and mtime, another route
    assert scanner.scan(2.0, claimed=()) == []  # not the old sighting: its wait starts again
    assert scanner.waiting == 1
    assert scanner.scan(4.0, claimed=()) == [moved]


# --- the folders around a routed file -------------------------------------------------------------------------


def test_a_claimed_file_put_back_returns_to_its_subfolder_under_a_free_name(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    claimed = write(inbox / ".processing" / "4-x.csv")
    write(inbox / "LineA" / "Station 2" / "x.csv", "a newer x, dropped meanwhile")
    back = intake.put_back(claimed, inbox, "LineA/Station 2/x.csv")
    assert back == inbox / "LineA" / "Station 2" / "x-2.csv"
    assert (inbox / "LineA" / "Station 2" / "x.csv").read_text() == "a newer x, dropped meanwhile"
    gone = write(inbox / ".processing" / "5-y.csv")
    assert intake.put_back(gone, inbox, "Removed/y.csv") == inbox / "Removed" / "y.csv"  # its folder made again


def test_report_temporaries_left_by_a_crash_are_removed_in_route_folders_too(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    temps = [write(outbox / ".x.report.csv.abcd1234.tmp"), write(outbox / "LineA" / "B" / ".y.summary.json.k.tmp")]
    kept = [write(outbox / "LineA" / "x.report.csv"), write(outbox / "LineA" / "B" / "notes.tmp")]
    (tmp_path / "elsewhere").mkdir()
    linked = write(tmp_path / "elsewhere" / ".z.tmp")
    (outbox / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert remove_leftover_temps(outbox) == 2
    assert not any(t.exists() for t in temps)
    assert all(k.exists() for k in kept)
    assert linked.exists()  # not followed


def test_the_example_route_in_config_example_loads_as_documented(tmp_path: Path) -> None:
    example = (Path(__file__).resolve().parent.parent / "config.example.toml").read_text(encoding="utf-8")
    block = example[example.index('# [routes."LineA"]') :].splitlines()
    settings = load(tmp_path, "\n".join(line.removeprefix("# ") for line in block))
    line_a = settings_for(settings, "LineA/codes.xlsx")
    assert (line_a.upload.data_key, line_a.upload.mode, line_a.intake.sheet) == ("serial_number", "sync", "Codes")
    assert line_a.columns == {"Serial No.": "serial_number"}


def test_a_claimed_workbook_is_read_with_its_routes_sheet_key_and_headings(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        '[upload]\nmode = "sync"\n[routes."LineA"]\ndata_key = "serial_number"\nmode = "async"\nsheet = "Codes"\n'
        '[routes."LineA".columns]\n"Serial No." = "serial_number"\n',
    )
    book = tmp_path / "inbox" / "LineA" / "codes.xlsx"
    book.parent.mkdir()
    workbook = xlsxwriter.Workbook(str(book))
    workbook.add_worksheet("Notes").write_row(0, 0, ["not", "this", "sheet"])
    codes = workbook.add_worksheet("Codes")
    codes.write_row(0, 0, ["Serial No.", "batch"])
    codes.write_row(1, 0, ["SN-0001", "L7"])
    workbook.close()
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    try:
        file_id, claimed = intake.claim(book, ledger, settings)
        assert claimed.parent == tmp_path / "inbox" / ".processing"
        assert intake.read(file_id, claimed, ledger, settings) == file_id
        f = ledger.file(file_id)
        assert (f.name, f.data_key, f.mode, f.error) == ("LineA/codes.xlsx", "serial_number", "async", None)
        assert f.layout.sheet == "Codes"
        assert [(key, status) for _line, key, status, *_ in ledger.report_rows(file_id)] == [("SN-0001", "pending")]
    finally:
        ledger.close()
