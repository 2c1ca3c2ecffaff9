"""The per-code upload history (`codes`): the last data uploaded for each code, what makes a re-drop idempotent.

An answer's codes are appended to `codes_new` in the transaction that records the answer, and moved into `codes`
in key order once MERGE_AT of them have gathered, and before anything reads `codes` (settle_codes): an upsert per
code into a B-tree of millions of random keys dirtied a page per code, a third of the cost of an upload.
"""

from collections.abc import Sequence

from sqlalchemy import Connection

from daemon.ledger.base import LedgerBase, row_move, sql
from daemon.ledger.dialect import NEW_CODE_COLUMNS
from daemon.states import RowStatus

UploadedCode = tuple[str, str | None, int]  # key, data hash, line
MERGE_AT = 50_000  # codes gathered before they are merged: a merge of 50,000 takes ~0.3 s into 1M codes, ~1 s into 5M


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
            conn, self.dialect.bulk_insert(conn, "codes_new", NEW_CODE_COLUMNS, records, fixed={"file_id": file_id})
        )

    def upload_batch(self, conn: Connection, data_key: str, file_id: int, batch_id: int) -> None:
        """Mark every queued row of a batch uploaded and remember its codes, in the caller's transaction."""
        move = row_move(RowStatus.QUEUED, RowStatus.UPLOADED)
        params = {"file_id": file_id, "batch_id": batch_id, "data_key": data_key, "now": self.now(), **move}
        self._appended(conn, self.dialect.upload_batch(conn, params))

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
