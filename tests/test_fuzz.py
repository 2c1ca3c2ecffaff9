"""Fuzzing harness (issue 11): hypothesis drives the CSV reader, the workbook pre-checks, the answer parsers and the
normalizer with hostile input; whatever comes in, the only failures are the documented ones.

The fast tier runs a few examples each; the slow tier (`-m slow`) runs the same targets for a fixed budget of
about 60 s in all. The corpus of hostile files (hostile_corpus.py) is replayed by test_hostile_files.py.
"""

import contextlib
import io
import json
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.answers import parse_sync_result, parse_task_id, parse_task_status
from daemon.errors import ApiError, item_errors
from daemon.normalize import canonical, key_problem
from daemon.readers import ReadLimits, UnreadableFile, open_table
from daemon.readers.limits import check_workbook

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BUDGET = settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
LIMITS = ReadLimits(max_rows=50, max_columns=20, max_cell_chars=200, max_file_mb=1)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)


def read_csv(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.csv"
        path.write_bytes(data)
        try:
            with open_table(path, limits=LIMITS) as table:
                for _line, cells in table.rows():
                    assert all(isinstance(c, str) for c in cells)
        except UnreadableFile as exc:
            if "f.csv" not in str(exc):
                raise AssertionError(f"the reason does not name the file: {exc}") from exc


def check_zip(members: list[tuple[str, bytes]]) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.xlsx"
        path.write_bytes(out.getvalue())
        try:
            check_workbook(path, LIMITS)
        except UnreadableFile as exc:
            if "f.xlsx" not in str(exc):
                raise AssertionError(f"the reason does not name the file: {exc}") from exc


def parse_answer(body: object) -> None:
    for parse in (
        lambda: parse_sync_result(body, "extended_id"),
        lambda: parse_task_id(body),
        lambda: parse_task_status(body, "t1", "/p"),
    ):
        with contextlib.suppress(ApiError):
            parse()
    item_errors(body, ["A", "B", None])


def normalize(text: str) -> None:
    canonical(text)
    key_problem(text, "extended_id")


csv_bytes = st.binary(max_size=2000) | st.text(alphabet=',;\t|"\r\n#=xé0', max_size=2000).map(str.encode)
sheet_names = st.sampled_from(["xl/worksheets/sheet1.xml", "content.xml", "xl/workbook.xml", "x"])
sheet_xml = st.text(alphabet="<>/=\"' crABXFD0123456789:tablerow-cepatd", max_size=500).map(str.encode)
zip_members = st.lists(st.tuples(sheet_names, sheet_xml), max_size=4, unique_by=lambda m: m[0])

TARGETS: dict[str, tuple[st.SearchStrategy[object], Callable[[object], None]]] = {
    "csv": (csv_bytes, read_csv),  # type: ignore[dict-item]
    "zip": (zip_members, check_zip),  # type: ignore[dict-item]
    "answer": (json_values | st.text().map(json.dumps), parse_answer),  # type: ignore[dict-item]
    "normalize": (st.text(max_size=200), normalize),  # type: ignore[dict-item]
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_briefly(target: str) -> None:
    strategy, check = TARGETS[target]
    FAST(given(strategy)(check))()


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_for_a_fixed_budget(target: str) -> None:
    # About 15 s per target, 60 s in all: hypothesis stops at the budget through its own deadline-free loop.
    import time

    strategy, check = TARGETS[target]
    end = time.monotonic() + 15

    def bounded(value: object) -> None:
        if time.monotonic() < end:
            check(value)

    BUDGET(given(strategy)(bounded))()


# What the fuzzing found, replayed on every run: each once crashed the target it names.
FINDINGS: list[tuple[str, object]] = [
    ("answer", {"²": [None]}),  # "²".isdigit() is true and int("²") raises: item keys must be ASCII digits
    ("answer", {"items": {"٣": ["bad"], "²": "x"}}),
]


@pytest.mark.parametrize(("target", "value"), FINDINGS)
def test_fuzz_findings_stay_fixed(target: str, value: object) -> None:
    TARGETS[target][1](value)
