"""Issue 11, findings 1 and 2: workbook bombs are refused by cheap pre-checks with a reason; the service stays up
and the good file beside them is uploaded. The corpus (tests/hostile_corpus.py) is replayed on every run."""

import io
import os
import zipfile
from pathlib import Path

import pytest
from hostile_corpus import far_cell_xlsx, repeated_ods, wide_csv
from support import Project, csv_text, make_project

from daemon.readers import ReadLimits, UnreadableFile, open_table
from daemon.sandbox import Emulator

CORPUS = {
    "far.xlsx": (far_cell_xlsx, "reaches column 16384"),
    "repeated.ods": (repeated_ods, "reaches column 16384"),
    "wide.csv": (wide_csv, "has 5000 columns"),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_each_hostile_file_is_refused_with_a_reason(tmp_path: Path, name: str) -> None:
    make, reason = CORPUS[name]
    path = tmp_path / name
    content = make()
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UnreadableFile) as caught, open_table(path, limits=ReadLimits()) as table:
        list(table.rows())
    assert reason in str(caught.value)
    assert name in str(caught.value)


def _far_cell_as(path: Path, cell: bytes) -> Path:
    """far_cell_xlsx() with its far cell's tag written as `cell`."""
    with zipfile.ZipFile(io.BytesIO(far_cell_xlsx())) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, data.replace(b'<c r="XFD1048576"', cell) if name.endswith("sheet1.xml") else data)
    return path


def test_only_a_cells_own_reference_counts_as_far(tmp_path: Path) -> None:
    # The pre-check looks for `r="..."`: the same text in another attribute (`xr="XFD1048576"`) is no cell's place,
    # and a reference after any blank (a tab, a newline) still is.
    other = _far_cell_as(tmp_path / "other.xlsx", b'<c r="B2" xr="XFD1048576"')
    with open_table(other, limits=ReadLimits()) as table:
        assert table.headers == ["extended_id"]
    tabbed = _far_cell_as(tmp_path / "tabbed.xlsx", b'<c\tr="XFD1048576"')
    with pytest.raises(UnreadableFile, match="reaches column 16384"), open_table(tabbed, limits=ReadLimits()):
        pass


def test_a_long_cell_names_its_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text("extended_id,batch\nCODE1," + "y" * 50 + "\n")
    with pytest.raises(UnreadableFile) as caught, open_table(path, limits=ReadLimits(max_cell_chars=10)) as table:
        list(table.rows())
    assert "row 2, column 2 holds 50 characters" in str(caught.value)


def test_bombs_beside_a_good_file_fail_and_the_good_file_is_uploaded(tmp_path: Path, emulator: Emulator) -> None:
    project: Project = make_project(tmp_path / "site", emulator.base_url)
    emulator.configure(known_codes=frozenset({"CODE00000001", "CODE00000002"}))
    project.drop("far.xlsx", far_cell_xlsx())
    project.drop("repeated.ods", repeated_ods())
    project.drop("good.csv", csv_text(["extended_id", "batch"], [("CODE00000001", "b1"), ("CODE00000002", "b2")]))
    done = project.cli("run", "--once")
    assert done.returncode == 0, done.stderr + done.stdout
    assert sorted(p.name for p in project.failed.iterdir() if p.is_file()) >= ["far.xlsx", "repeated.ods"]
    assert emulator.all_data("extended_id") == {
        "CODE00000001": {"batch": "b1"},
        "CODE00000002": {"batch": "b2"},
    }
    # Issue 11, file-system hygiene: what the service writes is not for others (umask 027).
    written = [project.ledger, *project.outbox.iterdir()]
    assert written
    assert all(p.stat().st_mode & 0o007 == 0 for p in written), [oct(p.stat().st_mode) for p in written]


@pytest.mark.slow
def test_a_hard_link_in_the_inbox_is_read_and_its_outside_name_left_alone(tmp_path: Path, emulator: Emulator) -> None:
    # Issue 11, file-system hygiene: only the inbox's name is moved; the name outside keeps its content and metadata.
    project: Project = make_project(tmp_path / "site", emulator.base_url)
    emulator.configure(known_codes=frozenset({"CODE00000001", "CODE00000002"}))
    outside = tmp_path / "elsewhere" / "master.csv"
    outside.parent.mkdir()
    content = csv_text(["extended_id", "batch"], [("CODE00000001", "b1"), ("CODE00000002", "b2")]).encode()
    outside.write_bytes(content)
    outside.chmod(0o644)
    os.link(outside, project.inbox / "codes.csv")
    before = outside.stat()
    done = project.cli("run", "--once")
    assert done.returncode == 0, done.stderr + done.stdout
    assert emulator.all_data("extended_id") == {"CODE00000001": {"batch": "b1"}, "CODE00000002": {"batch": "b2"}}
    assert project.summary("codes")["status"] == "completed"
    assert not (project.inbox / "codes.csv").exists()
    archived = [p for p in project.archive.rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in archived] == [content]
    after = outside.stat()
    assert outside.read_bytes() == content
    assert (after.st_ino, after.st_mode, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mode,
        before.st_mtime_ns,
        before.st_size,
    )
