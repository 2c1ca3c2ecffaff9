"""Where the ledger lives, and the one place where SQLite and PostgreSQL differ.

Every query of the ledger is the same text on both backends (SQLAlchemy `text()` with named parameters over the
tables of daemon.schema). What differs is here: how a connection is set up, SQLite's index hints (which its
query-plan test relies on), reading the stored row counts as JSON, and bulk inserts (SQLite's executemany on the
raw connection, COPY on PostgreSQL).
"""

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError

URL_SCHEMES = ("postgresql", "postgres")  # paths.ledger starting with one of these and "://" is a server
PASSWORD_CREDENTIAL = "ledger-password"  # noqa: S105 (a file's name) — the systemd credential (LoadCredential=) read when no file is set


class LedgerTargetError(ValueError):
    """paths.ledger (or its password file) cannot be used as given."""


def is_url(value: str) -> bool:
    """Whether a paths.ledger value names a database server rather than a file."""
    scheme, sep, _ = value.partition("://")
    return bool(sep) and scheme.split("+")[0].lower() in URL_SCHEMES


@dataclass(frozen=True)
class LedgerTarget:
    """The ledger's database: a SQLite file, or a PostgreSQL database (its password read from a file)."""

    url: URL

    @property
    def sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def path(self) -> Path | None:
        """The SQLite file, if the ledger is one."""
        return Path(self.url.database or "") if self.sqlite else None

    @property
    def shown(self) -> str:
        """How logs, errors and `status` name the ledger: the file's path, or the URL without its password."""
        if self.path is not None:
            return str(self.path)
        return self.url.set(drivername=self.url.get_backend_name()).render_as_string(hide_password=True)

    def __str__(self) -> str:
        return self.shown


def url_shown(value: str) -> str:
    """A database URL as it may be shown: its password replaced by ***, or all of it when it cannot be parsed."""
    try:
        return make_url(value).render_as_string(hide_password=True)
    except ArgumentError:
        return "***"


def parse_url(value: str) -> URL:
    """A postgresql:// setting as SQLAlchemy's URL on psycopg 3; it must not carry a password."""
    try:
        url = make_url(value)
    except ArgumentError as exc:
        raise LedgerTargetError(f"paths.ledger is not a valid database URL: {exc}") from None
    if url.password is not None:
        raise LedgerTargetError(
            "paths.ledger must not contain the password: put it in a file named by paths.ledger_password_file "
            f"(or the systemd credential {PASSWORD_CREDENTIAL})"
        )
    if not url.database:
        raise LedgerTargetError("paths.ledger names no database (postgresql://USER@HOST:PORT/DATABASE)")
    return url.set(drivername="postgresql+psycopg")


def ledger_target(
    ledger: Path | str | LedgerTarget, password_file: Path | None = None, env: Mapping[str, str] | None = None
) -> LedgerTarget:
    """The target of a paths.ledger value: a file path, or a postgresql:// URL whose password is read from
    `password_file`, else from `$CREDENTIALS_DIRECTORY/ledger-password` when systemd passes one, else none
    (trust, peer or a client certificate)."""
    if isinstance(ledger, LedgerTarget):
        return ledger
    if isinstance(ledger, Path) or not is_url(ledger):
        return LedgerTarget(URL.create("sqlite", database=str(ledger)))
    url = parse_url(ledger)
    environ = os.environ if env is None else env
    if password_file is None and environ.get("CREDENTIALS_DIRECTORY"):
        candidate = Path(environ["CREDENTIALS_DIRECTORY"]) / PASSWORD_CREDENTIAL
        password_file = candidate if candidate.is_file() else None
    if password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise LedgerTargetError(f"cannot read the ledger's password file {password_file}: {exc.strerror}") from None
        url = url.set(password=password)
    return LedgerTarget(url)


RowChange = tuple[int, str, str]  # line, new status, detail
NEW_CODE_COLUMNS = ("data_key", "key", "data_hash", "line", "uploaded_at")  # of codes_new, besides its file_id
_NEW_CODES = f"INSERT INTO codes_new ({', '.join(NEW_CODE_COLUMNS)}, file_id) "
_CODES_UPSERT = (
    "ON CONFLICT (data_key, key) DO UPDATE SET data_hash=excluded.data_hash, file_id=excluded.file_id, "
    "line=excluded.line, uploaded_at=excluded.uploaded_at"
)


def line_runs(members: Iterable[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(batch id, first line, last line) for each run of consecutive lines of one batch, in line order: the
    (batch id, line) pairs of planned rows as ranges, so that queueing a lot of contiguous rows is a statement per
    run, not per row. Every line of a run is a member, and every member is in exactly one run."""
    runs: list[tuple[int, int, int]] = []
    for batch_id, line in sorted(members, key=lambda member: member[1]):
        if runs and runs[-1][0] == batch_id and runs[-1][2] == line - 1:
            runs[-1] = (batch_id, runs[-1][1], line)
        else:
            runs.append((batch_id, line, line))
    return runs


Bound = tuple[str, str] | None  # (data_key, key) where a key range of codes_new begins or ends; None: open


def _key_range(after: Bound, upto: Bound) -> tuple[str, dict[str, str]]:
    """A WHERE clause for the codes of codes_new after `after` and up to `upto` in (data_key, key) order."""
    terms, params = ["true"], dict[str, str]()
    if after is not None:
        terms.append("(data_key > :after_dk OR (data_key = :after_dk AND key > :after_key))")
        params |= {"after_dk": after[0], "after_key": after[1]}
    if upto is not None:
        terms.append("(data_key < :upto_dk OR (data_key = :upto_dk AND key <= :upto_key))")
        params |= {"upto_dk": upto[0], "upto_key": upto[1]}
    return " AND ".join(terms), params


class Dialect:
    """What differs between the backends; this base is PostgreSQL's."""

    name = "postgresql"
    epoch_now = "extract(epoch from clock_timestamp())"  # the server's time now, in epoch seconds
    # The lines of one batch (bind batch_id), as an array first: as a join or IN, PostgreSQL's plans read every
    # row of the file per batch.
    batch_lines = "line = ANY(ARRAY(SELECT line FROM batch_rows WHERE batch_id=:batch_id))"
    # The rows of one batch (bind file_id and batch_id), ending in a WHERE clause.
    members = f"FROM rows r WHERE r.file_id=:file_id AND r.{batch_lines}"
    members_order = "r.line"
    # The guard of a row's status change (daemon.ledger.base.row_move) where the row is found by its line. Hidden
    # from PostgreSQL's planner in an expression: a `status=` condition made it read the file's open rows through
    # the partial index rows_open whenever the statistics held no row of that status (no row was `queued` when the
    # file was analyzed after intake), once per row changed.
    row_is_frm = "(status || '') = :frm"

    def indexed_by(self, index: str) -> str:
        """An index hint after a table name: SQLite only (PostgreSQL's planner picks the partial index itself)."""
        return ""

    def lock_row(self, conn: Connection, table: str, row_id: int) -> bool:
        """Lock a record by its id for the rest of the transaction; False when another transaction holds it."""
        statement = text(f"SELECT id FROM {table} WHERE id=:id FOR UPDATE SKIP LOCKED")
        return conn.execute(statement, {"id": row_id}).first() is not None

    def json_pairs(self, column: str, alias: str) -> str:
        """A FROM item giving the (key, value) pairs of a JSON object held as text, values as text or numbers."""
        return f"jsonb_each_text(CAST({column} AS jsonb)) {alias}"

    def bulk_insert(
        self,
        conn: Connection,
        table: str,
        columns: Sequence[str],
        records: Iterable[Sequence[Any]],
        *,
        fixed: Mapping[str, int] | None = None,
    ) -> int:
        """Insert many records in the connection's transaction, each record the values of `columns`, with the
        integer columns of `fixed` the same for all: COPY, the fastest way into PostgreSQL."""
        lead = tuple((fixed or {}).values())
        names = ", ".join((*(fixed or {}), *columns))
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        count = 0
        with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for record in records:
                copy.write_row((*lead, *record))
                count += 1
        return count

    marker = "%s"  # the driver's positional parameter

    def executemany(self, conn: Connection, statement: str, records: Sequence[Sequence[Any]]) -> int:
        """Run a statement written with `?` marks once per record of positional values, on the driver itself:
        for a million rows, binding tuples as they are is seconds faster than SQLAlchemy's named parameters.
        Returns the rows changed."""
        return int(conn.exec_driver_sql(statement.replace("?", self.marker), list(records)).rowcount)

    def loaded(self, conn: Connection, table: str) -> None:
        """After a bulk load: refresh the planner's statistics of the table, so that the next statements (the plan
        joining rows to batch_rows) are planned for the rows now there, not for an empty table."""
        conn.execute(text(f"ANALYZE {table}"))

    def confirm_rows(self, conn: Connection, file_id: int, frm: str, changes: Sequence[RowChange]) -> None:
        """Give rows of a file in status `frm` their new status and detail (validated by row_move): one UPDATE over
        arrays, where a statement per row costs a round trip each."""
        if not changes:
            return
        lines, tos, details = zip(*changes, strict=True)
        conn.execute(
            text(
                "UPDATE rows r SET status=m.status, detail=m.detail FROM unnest(CAST(:lines AS integer[]), "
                "CAST(:tos AS text[]), CAST(:details AS text[])) AS m(line, status, detail) "
                "WHERE r.file_id=:file_id AND r.line=m.line AND (r.status || '') = :frm"
            ),
            {"lines": list(lines), "tos": list(tos), "details": list(details), "file_id": file_id, "frm": frm},
        )

    def merge_codes(self, conn: Connection, after: Bound, upto: Bound) -> int:
        """Move the codes of codes_new with (data_key, key) after `after` and up to `upto` (None: no bound) into
        codes, the later of two uploads of a code winning; returns how many were moved. In key order, so that the
        index of codes is written page by page."""
        where, params = _key_range(after, upto)
        return int(
            conn.execute(
                text(
                    f"WITH moved AS (DELETE FROM codes_new WHERE {where} RETURNING *) "
                    "INSERT INTO codes (data_key, key, data_hash, file_id, line, uploaded_at) "
                    "SELECT DISTINCT ON (data_key, key) data_key, key, data_hash, file_id, line, uploaded_at "
                    f"FROM moved ORDER BY data_key, key, id DESC {_CODES_UPSERT}"
                ),
                params,
            ).rowcount
        )

    def upload_batch(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Give every row of a batch in status `frm` the status `to` and append its code to codes_new (bind
        file_id, batch_id, frm, to, data_key, now); returns the codes appended. One statement: the batch's rows
        are found once."""
        return int(
            conn.execute(
                text(
                    "WITH done AS (UPDATE rows SET status=:to, detail='' "
                    f"WHERE file_id=:file_id AND {self.row_is_frm} AND {self.batch_lines} "
                    "RETURNING file_id, line, key, data_hash) "
                    f"{_NEW_CODES}SELECT :data_key, key, data_hash, line, :now, file_id FROM done"
                ),
                params,
            ).rowcount
        )

    def queue_members(
        self, conn: Connection, file_id: int, members: list[tuple[int, int]], move: Mapping[str, str]
    ) -> int:
        """Give the rows of new batches (their (batch id, line) already in batch_rows, whole batches) the status
        and batch: a statement per batch, its lines as an array (`line = ANY(...)`), sent in one pipeline.

        Not a join of rows to the pairs (unnest, ranges or generate_series): PostgreSQL's planner cannot know how
        many of the file's rows match the hidden status guard and, guessing few, hashed the whole file for every
        step (0.5-0.7 s per 10,000 rows of a million-row file until autovacuum analyzed it). An array of lines is
        an index condition whose size the planner knows: the rows are found through the primary key."""
        by_batch: dict[int, list[int]] = {}
        for batch_id, line in members:
            by_batch.setdefault(batch_id, []).append(line)
        return self.executemany(
            conn,
            "UPDATE rows SET status=?, batch_id=? WHERE file_id=? AND line = ANY(CAST(? AS integer[])) "
            "AND (status || '') = ?",  # row_is_frm, positional
            [(move["to"], batch_id, file_id, lines, move["frm"]) for batch_id, lines in by_batch.items()],
        )


class SqliteDialect(Dialect):
    name = "sqlite"
    marker = "?"
    epoch_now = "(julianday('now') - 2440587.5) * 86400.0"
    batch_lines = "line IN (SELECT line FROM batch_rows WHERE batch_id=:batch_id)"
    members = "FROM batch_rows br JOIN rows r ON r.file_id=:file_id AND r.line=br.line WHERE br.batch_id=:batch_id"
    # By batch_rows' order: ordered by r.line, SQLite walks the file's rows in order and probes batch_rows for each.
    members_order = "br.line"
    row_is_frm = "status=:frm"

    def indexed_by(self, index: str) -> str:
        return f" INDEXED BY {index}"

    def lock_row(self, conn: Connection, table: str, row_id: int) -> bool:
        """SQLite has one writer at a time: the transaction's own UPDATE is the lock."""
        return True

    def json_pairs(self, column: str, alias: str) -> str:
        return f"json_each({column}) {alias}"

    def loaded(self, conn: Connection, table: str) -> None:
        """SQLite plans these statements by their indexes and hints alone."""

    def confirm_rows(self, conn: Connection, file_id: int, frm: str, changes: Sequence[RowChange]) -> None:
        """A statement per row on the driver: SQLite has no round trips to save."""
        if not changes:
            return
        self.executemany(
            conn,
            "UPDATE rows SET status=?, detail=? WHERE file_id=? AND line=? AND status=?",
            [(to, detail, file_id, line, frm) for line, to, detail in changes],
        )

    def merge_codes(self, conn: Connection, after: Bound, upto: Bound) -> int:
        # SQLite applies an upsert's rows in the SELECT's order: of two uploads of a code, the later one wins.
        where, params = _key_range(after, upto)
        conn.execute(
            text(
                "INSERT INTO codes (data_key, key, data_hash, file_id, line, uploaded_at) "
                "SELECT data_key, key, data_hash, file_id, line, uploaded_at FROM codes_new "
                f"WHERE {where} ORDER BY data_key, key, id {_CODES_UPSERT}"
            ),
            params,
        )
        return int(conn.execute(text(f"DELETE FROM codes_new WHERE {where}"), params).rowcount)

    def upload_batch(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Two statements: the codes first, while the rows are still in status `frm`."""
        appended = conn.execute(
            text(
                f"{_NEW_CODES}SELECT :data_key, r.key, r.data_hash, r.line, :now, r.file_id "
                f"{self.members} AND {self.row_is_frm}"
            ),
            params,
        ).rowcount
        conn.execute(
            text(
                "UPDATE rows SET status=:to, detail='' "
                f"WHERE file_id=:file_id AND {self.row_is_frm} AND {self.batch_lines}"
            ),
            params,
        )
        return int(appended)

    def queue_members(
        self, conn: Connection, file_id: int, members: list[tuple[int, int]], move: Mapping[str, str]
    ) -> int:
        """In row order, a statement per run of consecutive lines on the driver: sequential in the clustered rows
        table, and faster on SQLite than the join."""
        return self.executemany(
            conn,
            "UPDATE rows SET status=?, batch_id=? WHERE file_id=? AND line BETWEEN ? AND ? AND status=?",
            [(move["to"], batch_id, file_id, first, last, move["frm"]) for batch_id, first, last in line_runs(members)],
        )

    def bulk_insert(
        self,
        conn: Connection,
        table: str,
        columns: Sequence[str],
        records: Iterable[Sequence[Any]],
        *,
        fixed: Mapping[str, int] | None = None,
    ) -> int:
        """executemany on the driver with positional `?`, the fixed integers written into the statement: binding
        the records' tuples as they are is what keeps intake at 100,000 rows/s."""
        chunk = records if isinstance(records, list) else list(records)
        names = ", ".join((*(fixed or {}), *columns))
        values = ", ".join((*(str(int(v)) for v in (fixed or {}).values()), *("?" * len(columns))))
        conn.exec_driver_sql(f"INSERT INTO {table} ({names}) VALUES ({values})", chunk)
        return len(chunk)


def dialect_of(engine: Engine) -> Dialect:
    return SqliteDialect() if engine.dialect.name == "sqlite" else Dialect()


def open_engine(target: LedgerTarget) -> Engine:
    """An engine on the ledger: SQLite with WAL, a busy timeout, foreign keys and full fsync; PostgreSQL through
    psycopg 3, checking a pooled connection before use so that a restarted server is reconnected to."""
    if not target.sqlite:
        return create_engine(target.url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    engine = create_engine(target.url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed state change survives a power cut too, not only a crash; commits are per step, not per row.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        # Sorts and groupings bigger than the page cache (the repeats of a million-row file) spill to a temporary
        # file: held in memory, that one grouping cost 45 MB of the service's peak.
        cur.execute("PRAGMA temp_store=FILE")
        cur.close()

    return engine


class LedgerUnavailable(Exception):
    """The ledger's database server cannot be reached (or refused the connection)."""


def unavailable(target: LedgerTarget, exc: BaseException) -> LedgerUnavailable:
    """The error to show for a database that cannot be reached: the URL without its password, the server's words."""
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return LedgerUnavailable(f"cannot reach the ledger {target.shown}: {first}")


def ledger_exists(target: LedgerTarget) -> bool:
    """Whether there is a ledger to read: the SQLite file, or the tables in the PostgreSQL database (which must
    exist; the tables are created by the first `run`)."""
    if target.path is not None:
        return target.path.exists()
    engine = open_engine(target)
    try:
        with engine.connect() as conn:
            return inspect(conn).has_table("files")
    except DBAPIError as exc:
        raise unavailable(target, exc) from None
    finally:
        engine.dispose()
