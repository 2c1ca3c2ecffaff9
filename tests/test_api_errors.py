"""Per-item errors of a refused sync upload: the DRF shapes read by errors.item_errors, and Rejected.item_errors."""

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from daemon import api, errors
from daemon.api import Rejected, ScantrustClient
from daemon.errors import item_errors
from daemon.sandbox import Emulator

CODES = ["AAAAAAAA1", "BBBBBBBB2", "CCCCCCCC3"]

SHAPES: list[tuple[str, object, dict[int, str] | None]] = [
    # DRF ListSerializer: one entry per item, {} for the good ones.
    ("aligned list", {"items": [{}, {"extended_id": ["Invalid code."]}, {}]}, {1: "extended_id: Invalid code."}),
    ("aligned, two bad", {"items": [{"lot": ["Bad."]}, {}, {"extended_id": ["A.", "B."]}]},
     {0: "lot: Bad.", 2: "extended_id: A.; extended_id: B."}),
    ("aligned strings", {"items": ["", "Invalid code.", ""]}, None),  # all strings: ambiguous, a list-level error
    ("aligned mixed", {"items": [{}, "Invalid code.", None]}, {1: "Invalid code."}),
    ("top-level list", [{}, {}, {"extended_id": ["Invalid code."]}], {2: "extended_id: Invalid code."}),
    ("list of wrong length", {"items": [{}, {"extended_id": ["Invalid code."]}]}, None),
    ("all good entries", {"items": [{}, {}, {}]}, None),
    ("keyed by index", {"items": {"1": {"extended_id": ["Invalid code."]}}}, {1: "extended_id: Invalid code."}),
    ("keyed by int index", {"items": {2: ["Nope."]}}, {2: "Nope."}),
    ("index out of range", {"items": {"7": ["Nope."]}}, None),
    ("keyed by code", {"items": {"BBBBBBBB2": ["Invalid code."]}}, {1: "Invalid code."}),
    ("code at top level", {"CCCCCCCC3": "Unknown.", "detail": "Invalid code in batch."}, {2: "Unknown."}),
    ("unrelated key", {"CCCCCCCC3": ["Unknown."], "data_key": ["Bad."]}, None),
    ("detail only", {"detail": "Invalid code in batch."}, None),
    ("list-level message", {"items": ["Ensure this field has no more than 100 elements."]}, None),
    ("field error", {"data_key": ['"sku" is not a valid choice.']}, None),
    ("not json", None, None),
    ("a string", "Bad request", None),
    ("empty message", {"items": {"1": []}}, None),
]  # fmt: skip


@pytest.mark.parametrize(("why", "body", "expected"), SHAPES, ids=[s[0] for s in SHAPES])
def test_item_error_shapes(why: str, body: object, expected: dict[int, str] | None) -> None:
    assert item_errors(body, CODES) == expected, why


def test_a_repeated_code_marks_every_item_with_it() -> None:
    assert item_errors({"items": {"AAAAAAAA1": ["Bad."]}}, ["AAAAAAAA1", "B", "AAAAAAAA1"]) == {0: "Bad.", 2: "Bad."}


def test_a_code_wins_over_an_index() -> None:
    # Serial numbers can be digits: "1" is the code of item 2 here, not the index 1.
    assert item_errors({"items": {"1": ["Bad."]}}, ["0007", "0008", "1"]) == {2: "Bad."}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@given(json_values, st.lists(st.text(max_size=4) | st.none(), max_size=5))
def test_item_errors_never_fail_and_stay_in_range(body: object, codes: list[str | None]) -> None:
    found = item_errors(body, codes)
    assert found is None or (found and all(0 <= index < len(codes) and message for index, message in found.items()))


# -- through the client, against the emulator ------------------------------------------------------------------


@pytest.fixture
def client(emulator: Emulator) -> Iterator[ScantrustClient]:
    client = ScantrustClient(emulator.base_url, SecretStr("sandbox-token"), connect_timeout=2, read_timeout=5)
    yield client
    client.close()


def items(*ns: int) -> list[dict[str, str]]:
    return [{"extended_id": f"CODE{n:08d}", "lot": "1"} for n in ns]


def test_poisoned_items_are_named(emulator: Emulator, client: ScantrustClient) -> None:
    emulator.configure(poison_codes={"CODE00000002", "CODE00000004"})
    with pytest.raises(Rejected) as caught:
        client.upload_sync("extended_id", items(1, 2, 3, 4))
    assert caught.value.item_errors == {1: "extended_id: Invalid code.", 3: "extended_id: Invalid code."}
    assert caught.value.status == 400


def test_a_bare_detail_names_no_item(emulator: Emulator, client: ScantrustClient) -> None:
    emulator.configure(poison_codes={"CODE00000002"}, poison_style="detail")
    with pytest.raises(Rejected) as caught:
        client.upload_sync("extended_id", items(1, 2, 3))
    assert caught.value.item_errors is None
    assert caught.value.detail == "Invalid code in batch."


def test_validation_errors_are_per_item_too(client: ScantrustClient) -> None:
    with pytest.raises(Rejected) as caught:
        client.upload_sync("extended_id", [*items(1), {"lot": "1"}])
    assert caught.value.item_errors == {1: "extended_id: This field is required."}


def test_rejected_without_per_item_errors_defaults_to_none() -> None:
    assert Rejected("x", status=400, detail="").item_errors is None


def test_the_old_import_paths_still_work() -> None:
    for name in ("ApiError", "Rejected", "NotFound", "classify", "ErrorKind", "parse_retry_after", "Throttled"):
        assert getattr(api, name) is getattr(errors, name)
