"""The per-code upload history (`codes`): the last data uploaded for each code, what makes a re-drop idempotent.

An answer's codes are appended to `codes_new` in the transaction that records the answer, and moved into `codes`
in key order once MERGE_AT of them have gathered, and before anything reads `codes` (settle_codes): an upsert per
code into a B-tree of millions of random keys dirtied a page per code, a third of the cost of an upload.
"""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from daemon.ledger.base import LedgerBase, sql

UploadedCode = tuple[str, str | None, int]  # key, data hash, line
MERGE_AT = 50_000  # codes gathered before they are merged: a merge of 50,000 takes ~0.3 s into a million codes
_NEW_COLUMNS = ("data_key", "key", "data_hash", "line", "uploaded_at")


class CodeStore(LedgerBase):
    """What was uploaded, per code and data key."""

    _gathered = 0  # codes appended by this process since its last merge (others' are found by settle_codes)

    def remember_codes(self, conn: Connection, data_key: str, file_id: int, codes: Sequence[UploadedCode]) -> None:
        """Record codes as uploaded with their data, in the caller's transaction."""
        if not codes:
            return
        now = self.now()
        records = [(data_key, key, data_hash, line, now) for key, data_hash, line in codes]
        self._appended(
            conn, self.dialect.bulk_insert(conn, "codes_new", _NEW_COLUMNS, records, fixed={"file_id": file_id})
        )

    def remember_batch(self, conn: Connection, data_key: str, members: dict[str, Any]) -> None:
        """Record as uploaded every row of a batch in status `frm` (bind file_id, batch_id and frm), in the
        caller's transaction, before their status changes."""
        appended = conn.execute(
            sql(
                f"INSERT INTO codes_new ({', '.join(_NEW_COLUMNS)}, file_id) "
                f"SELECT :data_key, r.key, r.data_hash, r.line, :now, r.file_id {self.dialect.members} "
                f"AND {self.dialect.row_is_frm}"
            ),
            {**members, "data_key": data_key, "now": self.now()},
        ).rowcount
        self._appended(conn, appended)

    def settle_codes(self) -> int:
        """Merge the gathered codes into `codes` (a probe when there are none); returns how many were merged.
        Whatever reads `codes` calls it first."""
        with self.begin() as conn:
            if conn.execute(sql("SELECT 1 FROM codes_new LIMIT 1")).first() is None:
                return 0
            return self._merge(conn)

    def _appended(self, conn: Connection, count: int) -> None:
        """`count` codes were appended in this transaction: merge them all once MERGE_AT have gathered."""
        self._gathered += count
        if self._gathered >= MERGE_AT:
            self._merge(conn)

    def _merge(self, conn: Connection) -> int:
        merged = self.dialect.merge_codes(conn)
        self._gathered = 0
        return merged
