"""A file's layout as its ledger record keeps it (files.layout, JSON): how it was read, and how its columns map."""

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # normalize loads the readers: not for `status`
    from daemon.normalize import Layout


@dataclass(frozen=True)
class FileLayout:
    """How a file was read (format, encoding, delimiter or sheet, where the header is) and mapped (headers, key
    column, SCM fields), with what intake noticed. A file never read has the defaults (`format` None)."""

    format: str | None = None  # "csv" | "tsv" | "txt" | "xlsx" | "xlsm" | "xls" | "ods"
    encoding: str | None = None  # csv family
    delimiter: str | None = None  # csv family
    sheet: str | None = None  # excel family: the sheet read
    header_row: int = 1  # spreadsheet row number of the header
    column_offset: int = 0  # sheet columns left of the first cell of each row
    headers: tuple[str, ...] = ()
    key_index: int = 0
    fields: tuple[tuple[int, str], ...] = ()  # (column index, SCM field key), in column order
    warnings: tuple[str, ...] = ()
    written_by_daemon: bool = False  # a rejected file this daemon wrote (see normalize.Layout)
    clear_empty: bool = False  # upload.empty_cells = "clear" when it was read
    dates_rewritten: Mapping[str, int] = field(default_factory=dict)  # per field: date cells sent as YYYY-MM-DD

    @classmethod
    def of(cls, info: Any, mapping: "Layout", *, clear_empty: bool) -> "FileLayout":
        """The record of a file read as `info` (the reader's TableInfo) and mapped as `mapping`."""
        read = {k: v for k, v in asdict(info).items() if k in _READ}
        return cls(
            **read,
            headers=mapping.headers,
            key_index=mapping.key_index,
            fields=mapping.fields,
            warnings=mapping.warnings,
            written_by_daemon=mapping.written_by_daemon,
            clear_empty=clear_empty,
        )

    @property
    def read(self) -> bool:
        """Whether the file was read far enough to know its format and columns."""
        return self.format is not None

    def mapping(self) -> "Layout":
        """The column mapping the uploader and the checks use."""
        from daemon.normalize import Layout  # noqa: PLC0415 (see the TYPE_CHECKING import)

        return Layout(self.headers, self.key_index, self.fields, self.warnings, self.written_by_daemon)

    def format_record(self) -> dict[str, Any]:
        """How the file was read, as summary.json and `validate` show it ({} for a file never read)."""
        return (
            {k: getattr(self, k) for k in ("format", "encoding", "delimiter", "sheet", "header_row")}
            if self.read
            else {}
        )

    def columns(self) -> dict[str, str]:
        """Heading -> SCM field key, in column order."""
        return {self.headers[i]: key for i, key in self.fields}

    def with_dates_rewritten(self, rewritten: Mapping[str, int]) -> "FileLayout":
        """The record with its date rewrites: counted per field, and a warning for each field."""
        warnings = list(self.warnings)
        for key, count in rewritten.items():
            values = "value" if count == 1 else "values"
            warnings.append(f"{count} {values} of {key!r} rewritten as YYYY-MM-DD, as the API wants dates")
        return replace(self, warnings=tuple(warnings), dates_rewritten=dict(rewritten))

    def to_json(self) -> str:
        record = asdict(self)
        record["fields"] = [list(f) for f in self.fields]
        return json.dumps(record)

    @classmethod
    def from_json(cls, text: str) -> "FileLayout":
        """The record as stored; keys it does not know (or an older ledger lacks) are left out or defaulted."""
        record = json.loads(text) if text else {}
        known = {k: v for k, v in record.items() if k in _FIELDS}
        if "headers" in known:
            known["headers"] = tuple(known["headers"])
        if "fields" in known:
            known["fields"] = tuple((int(i), str(f)) for i, f in known["fields"])
        if "warnings" in known:
            known["warnings"] = tuple(known["warnings"])
        return cls(**known)


_FIELDS = frozenset(FileLayout.__dataclass_fields__)
_READ = frozenset({"format", "encoding", "delimiter", "sheet", "header_row", "column_offset"})
