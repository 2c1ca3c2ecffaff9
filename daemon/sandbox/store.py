"""The emulator's SCM data: validation of sync upload bodies, and the codes' field values that uploads change."""

import json
import re
import threading
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

DATA_KEYS = ("extended_id", "serial_number")
MAX_SYNC_ITEMS = 100
MAX_KEY_LENGTH = 100
_EXTENDED_ID = re.compile(r"[A-Za-z0-9_-]{8,100}")

# DRF-style error body: {"field": ["message"]}, {"detail": "message"}, or per-item lists of those.
ErrorBody = dict[str, object]


class ValidationFailed(Exception):
    """The request body was refused (HTTP 400); `body` is what the API would answer."""

    def __init__(self, body: ErrorBody) -> None:
        super().__init__(json.dumps(body))
        self.body = body


@dataclass(frozen=True)
class SyncRequest:
    """A validated sync upload: the key field and the items, every value a string."""

    data_key: str
    items: tuple[Mapping[str, str], ...]


@dataclass(frozen=True)
class SyncOutcome:
    """What a sync upload changed: code -> names of the fields whose value changed."""

    items: Mapping[str, list[str]]
    total_updates: int
    codes_affected: int


def is_well_formed(data_key: str, code: str) -> bool:
    """Whether `code` could exist under `data_key` (an extended_id is 8..100 of [A-Za-z0-9_-])."""
    if data_key == "extended_id":
        return _EXTENDED_ID.fullmatch(code) is not None
    return 0 < len(code) <= MAX_KEY_LENGTH


def json_object(raw: bytes) -> dict[str, object]:
    """A request body that must be a JSON object, or ValidationFailed with the API's words."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationFailed({"detail": f"JSON parse error - {exc}"}) from None
    if not isinstance(body, dict):
        got = type(body).__name__
        raise ValidationFailed({"non_field_errors": [f"Invalid data. Expected a dictionary, but got {got}."]})
    return body


def parse_sync_body(raw: bytes) -> SyncRequest:
    """Parse and validate a sync upload body the way the API's serializer would; raise ValidationFailed."""
    body = json_object(raw)
    # API.md: extended_id is the default key, so a body without data_key is read as extended_id.
    data_key = body.get("data_key", "extended_id")
    if data_key not in DATA_KEYS:
        raise ValidationFailed({"data_key": [f'"{data_key}" is not a valid choice.']})
    if "items" not in body:
        raise ValidationFailed({"items": ["This field is required."]})
    items = body["items"]
    if not isinstance(items, list):
        got = type(items).__name__
        raise ValidationFailed({"items": [f'Expected a list of items but got type "{got}".']})
    if len(items) > MAX_SYNC_ITEMS:
        raise ValidationFailed({"items": [f"Ensure this field has no more than {MAX_SYNC_ITEMS} elements."]})
    errors = [_item_errors(data_key, item) for item in items]
    if any(errors):
        # Same shape as a nested DRF ListSerializer: one error object per item, {} for the good ones.
        raise ValidationFailed({"items": errors})
    return SyncRequest(data_key=data_key, items=tuple(items))


def _item_errors(data_key: str, item: object) -> ErrorBody:
    if not isinstance(item, dict):
        got = type(item).__name__
        return {"non_field_errors": [f"Invalid data. Expected a dictionary, but got {got}."]}
    errors: ErrorBody = {}
    if data_key not in item:
        errors[data_key] = ["This field is required."]
    for name, value in item.items():
        if value is None:
            errors[name] = ["This field may not be null."]
        elif not isinstance(value, str):
            errors[name] = ["Not a valid string."]
        elif name == data_key and not value:
            errors[name] = ["This field may not be blank."]
    return errors


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")


class Shards(Generic[K, V]):
    """A dict split by the keys' hash into SHARDS dicts. A dict of a million codes doubles its table at once
    (at 699,051 entries): that rehash held the emulator's threads for ~0.1 s, the uploads arriving meanwhile were
    stamped late and together, and its throttle refused one the client had spaced correctly — always at the
    700th job of the headline. Split, each of those resizes is 1/SHARDS of the work."""

    SHARDS = 64

    def __init__(self) -> None:
        self._parts: list[dict[K, V]] = [{} for _ in range(self.SHARDS)]

    def _part(self, key: K) -> dict[K, V]:
        return self._parts[hash(key) % self.SHARDS]

    def get(self, key: K, default: D) -> V | D:
        return self._part(key).get(key, default)

    def setdefault(self, key: K, default: V) -> V:
        return self._part(key).setdefault(key, default)

    def __setitem__(self, key: K, value: V) -> None:
        self._part(key)[key] = value

    def items(self) -> Iterator[tuple[K, V]]:
        for part in self._parts:
            yield from part.items()

    def __iter__(self) -> Iterator[K]:
        for part in self._parts:
            yield from part


class ScmStore:
    """SCM field values per (data_key, code), and how many accepted updates touched each code."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, Shards[str, dict[str, str]]] = {key: Shards() for key in DATA_KEYS}
        self._transactions: Shards[tuple[str, str], int] = Shards()

    def apply_sync(
        self,
        request: SyncRequest,
        *,
        known_codes: frozenset[str] | None,
        campaign_fields: frozenset[str] | None,
    ) -> SyncOutcome:
        """Apply a validated upload; unknown or malformed codes are skipped, foreign fields discarded."""
        data_key = request.data_key
        changed: dict[str, list[str]] = {}
        touched: set[str] = set()
        total = 0
        with self._lock:
            for item in request.items:
                code = item[data_key]
                # A malformed code cannot exist, so it is treated like an unknown one: silently not affected.
                unknown = known_codes is not None and code not in known_codes
                if unknown or not is_well_formed(data_key, code):
                    continue
                touched.add(code)
                record = self._data[data_key].setdefault(code, {})
                for name, value in item.items():
                    if name in DATA_KEYS or (campaign_fields is not None and name not in campaign_fields):
                        continue
                    if record.get(name, "") == value:
                        continue
                    # An empty string clears the field (API.md [guess]); a cleared field is not held at all.
                    if value:
                        record[name] = value
                    else:
                        del record[name]
                    fields = changed.setdefault(code, [])
                    if name not in fields:
                        fields.append(name)
                    total += 1
            for code in touched:
                self._transactions[data_key, code] = self._transactions.get((data_key, code), 0) + 1
        return SyncOutcome(items=changed, total_updates=total, codes_affected=len(changed))

    def apply_async(
        self,
        constraints: Mapping[str, Sequence[str]],
        scm_data: Mapping[str, str],
        *,
        known_codes: frozenset[str] | None,
        campaign_fields: frozenset[str] | None,
    ) -> int:
        """Set `scm_data` on every code matching all constraints; return how many codes matched."""
        with self._lock:
            matched = self._match(constraints, known_codes)
            for data_key, code in matched:
                record = self._data[data_key].setdefault(code, {})
                for name, value in scm_data.items():
                    if name in DATA_KEYS or (campaign_fields is not None and name not in campaign_fields):
                        continue
                    if value:
                        record[name] = value
                    else:
                        record.pop(name, None)
                self._transactions[data_key, code] = self._transactions.get((data_key, code), 0) + 1
        return len(matched)

    def _match(
        self, constraints: Mapping[str, Sequence[str]], known_codes: frozenset[str] | None
    ) -> list[tuple[str, str]]:
        """(data_key, code) pairs matching every constraint key (one of its values); the caller holds the lock.

        A key constraint (extended_id, serial_number) selects codes that exist, as a sync upload would; a field
        constraint matches codes whose held data has one of its values. Each code here has a single key, so a
        job constraining both extended_id and serial_number matches nothing.
        """
        wanted = {name: set(values) for name, values in constraints.items() if name not in DATA_KEYS}
        keys = [key for key in DATA_KEYS if key in constraints]
        if len(keys) > 1:
            return []
        matched: list[tuple[str, str]] = []
        for data_key in keys or DATA_KEYS:
            if data_key in constraints:
                candidates = [
                    code
                    for code in dict.fromkeys(constraints[data_key])
                    if is_well_formed(data_key, code) and (known_codes is None or code in known_codes)
                ]
            else:
                candidates = list(self._data[data_key])
            for code in candidates:
                record = self._data[data_key].get(code, {})
                if all(record.get(name) in values for name, values in wanted.items()):
                    matched.append((data_key, code))
        return matched

    def data(self, data_key: str, code: str) -> dict[str, str] | None:
        """A copy of the SCM data held for a code, or None if no accepted update ever included it."""
        with self._lock:
            shards = self._data.get(data_key)
            record = None if shards is None else shards.get(code, None)
            return None if record is None else dict(record)

    def all_data(self, data_key: str) -> dict[str, dict[str, str]]:
        """A copy of the SCM data of every code that an accepted update included."""
        with self._lock:
            shards = self._data.get(data_key)
            return {} if shards is None else {code: dict(record) for code, record in shards.items()}

    def transactions(self, data_key: str, code: str) -> int:
        """How many accepted updates included this code, changed or not (the portal's Code Transactions)."""
        with self._lock:
            return self._transactions.get((data_key, code), 0)
