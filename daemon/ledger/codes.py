"""The per-code upload history (`codes`): the last data uploaded for each code, what makes a re-drop idempotent.

An answer's codes are appended to `codes_new` in the transaction that records the answer, and moved into `codes`
in key order once MERGE_AT of them have gathered, and before anything reads `codes` (settle_codes): an upsert per
code into a B-tree of millions of random keys dirtied a page per code, a third of the cost of an upload.

A merge of MERGE_AT codes is done a key range at a time (merge_some, a step of the service's loop each): the slices
touch disjoint parts of the `codes` B-tree, so the whole costs what one merge would, while no step holds the loop
(and the answers waiting to be recorded) for long — a merge of 50,000 codes into five million took 1.0 s.
"""

from collections.abc import Sequence

from sqlalchemy import Connection

from daemon.ledger.base import LedgerBase, row_move, sql
from daemon.ledger.dialect import NEW_CODE_COLUMNS, Bound
from daemon.states import RowStatus

UploadedCode = tuple[str, str | None, int]  # key, data hash, line
MERGE_AT = 50_000  # codes gathered before they are merged: a merge of 50,000 takes ~0.3 s into 1M codes, ~1 s into 5M
MERGE_SLICE = 5_000  # codes merged in one step, about (a key range of codes_new; see merge_some): ~0.1 s into 1M


class CodeStore(LedgerBase):
    """What was uploaded, per code and data key."""

    _gathered = 0  # codes appended by this process since its last merge (others' are found by settle_codes)
    _slices: tuple[tuple[Bound, Bound], ...] = ()  # the key ranges of a merge under way, the next first

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
            if _none_gathered(conn):
                return 0
            merged = self.dialect.merge_codes(conn, None, None)
        self._gathered, self._slices = 0, ()
        return merged

    def merge_some(self) -> int:
        """Merge the next key range of the gathered codes when MERGE_AT have gathered (or a merge is under way), in
        a transaction of its own; returns how many were merged (0: nothing due). A step of the service's loop.

        The ranges are fixed when the merge starts, about MERGE_SLICE codes each (the last one open-ended):
        codes appended meanwhile join the range they fall in, or wait for the next merge."""
        if not self._slices:
            if self._gathered < MERGE_AT:
                return 0
            self._start_merge()
        return self._merge_slice()

    def settle_some(self) -> bool:
        """settle_codes a key range at a time: merge the next range of a merge of everything gathered (started
        when none is under way); True while codes may remain, False once codes_new is empty (a probe)."""
        if not self._slices:
            with self.connect() as conn:
                if _none_gathered(conn):
                    return False
            self._start_merge()
        self._merge_slice()
        return True

    def _start_merge(self) -> None:
        with self.connect() as conn:
            ranked = [
                (str(k), str(c))
                for k, c in conn.execute(sql(_SLICE_ENDS), {"sample": SAMPLE, "every": max(1, MERGE_SLICE // SAMPLE)})
            ]
        ends = [end for i, end in enumerate(ranked) if i == 0 or end != ranked[i - 1]]  # a code uploaded often
        starts: list[Bound] = [None, *ends]
        self._slices = tuple(zip(starts, [*ends, None], strict=True))
        self._gathered = 0  # what is appended from now on counts towards the next merge

    def _merge_slice(self) -> int:
        (after, upto), self._slices = self._slices[0], self._slices[1:]
        with self.begin() as conn:
            return self.dialect.merge_codes(conn, after, upto)

    def _appended(self, conn: Connection, count: int) -> None:
        """`count` codes were appended in this transaction: merge_some merges them once MERGE_AT have gathered."""
        self._gathered += count


def _none_gathered(conn: Connection) -> bool:
    """Whether codes_new is empty (a probe)."""
    return conn.execute(sql("SELECT 1 FROM codes_new LIMIT 1")).first() is None


# Where each slice of a merge ends: every SAMPLE-th code of codes_new by arrival, sorted, taken every
# MERGE_SLICE / SAMPLE-th: ranges of about MERGE_SLICE codes whatever the keys look like, for a sort of a tenth of them.
SAMPLE = 10
_SLICE_ENDS = (
    "SELECT data_key, key FROM (SELECT data_key, key, row_number() OVER (ORDER BY data_key, key) AS n "
    "FROM codes_new WHERE id % :sample = 0) AS ranked WHERE n % :every = 0 ORDER BY n"
)
