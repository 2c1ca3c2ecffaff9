"""The ledger, the only source of truth: files, rows and batches, each change a guarded UPDATE committed at once."""

from daemon.ledger.base import UPLOADS_PAUSED, BatchInfo, Clock, FileInfo, StateConflict, utcnow
from daemon.ledger.batches import BatchStore
from daemon.ledger.figures import FigureStore, LedgerFigures
from daemon.ledger.files import FileStore
from daemon.ledger.history import FileLine, HistoryStore
from daemon.ledger.layout import FileLayout
from daemon.ledger.leases import LeaseInfo, LeaseStore
from daemon.ledger.notifications import NotificationInfo, NotificationState, NotificationStore
from daemon.ledger.rows import RowStore


class Ledger(FileStore, RowStore, BatchStore, FigureStore, HistoryStore, NotificationStore, LeaseStore):
    """The ledger, on a SQLite file or a PostgreSQL database. One process writes it (the service's main thread);
    others may read."""


__all__ = [
    "UPLOADS_PAUSED",
    "BatchInfo",
    "Clock",
    "FileInfo",
    "FileLayout",
    "FileLine",
    "LeaseInfo",
    "Ledger",
    "LedgerFigures",
    "NotificationInfo",
    "NotificationState",
    "StateConflict",
    "utcnow",
]
