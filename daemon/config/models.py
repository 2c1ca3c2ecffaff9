"""The configuration's sections and keys: defaults, types and the rules each value must follow."""

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from daemon.dates import DEFAULT_DATE_FIELDS, DateOrder, DateSettings
from daemon.ledger.dialect import LedgerTarget, is_url, ledger_target, parse_url

if TYPE_CHECKING:  # the readers (calamine, the XLSX scans) load only where a file is read, not for `status`
    from daemon.readers.limits import ReadLimits

SYSTEM_CONFIG = Path("/etc/scm-daemon/config.toml")
CREDENTIAL_NAME = "scantrust-token"  # systemd LoadCredential=scantrust-token:/path/to/file
SMTP_CREDENTIAL_NAME = "scm-smtp-password"  # systemd LoadCredential=scm-smtp-password:/path/to/file
KEY_COLUMNS = frozenset({"extended_id", "serial_number"})


class ConfigError(Exception):
    """A configuration problem, worded for the person who has to fix it (never contains the token)."""


_SECTION = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
Seconds = Annotated[float, Field(gt=0)]


def _nonblank(value: str, what: str = "must not be empty") -> str:
    if not value.strip():
        raise ValueError(what)
    return value.strip()


def _at_least(model: BaseModel, low: str, high: str) -> None:
    if getattr(model, high) < getattr(model, low):
        raise ValueError(f"{high} ({getattr(model, high):g}) must be at least {low} ({getattr(model, low):g})")


class ApiSettings(BaseModel):
    """[api]: where the Scantrust API is and how hard to push it."""

    model_config = _SECTION
    base_url: str = "https://api.scantrust.com"
    token: SecretStr | None = None  # only from SCM_API__TOKEN, token_file or the systemd credential
    token_file: str = ""
    connect_timeout: Seconds = 10.0
    read_timeout: Seconds = 90.0
    request_deadline: float | None = Field(default=None, gt=0)  # whole answer; None: read_timeout + 30 s
    requests_per_second: float = Field(default=8.0, gt=0)
    max_in_flight: int = Field(default=8, ge=1)

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://api.scantrust.com")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        if parts.path not in ("", "/"):
            # The daemon appends the fixed /api/v2/... paths itself; a pasted path would make every call 404.
            raise ValueError(f"api.base_url must be the host only, e.g. https://api.scantrust.com; drop {parts.path!r}")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            # The token travels in every request's header; only the local emulator may go without TLS.
            raise ValueError("must use https:// (plain http is only allowed to 127.0.0.1 or localhost)")
        return value.strip().rstrip("/")

    def require_token(self) -> str:
        """The token's value, or a ConfigError that says how to provide one."""
        if self.token is None:
            raise ConfigError(
                "no API token: set SCM_API__TOKEN, or api.token_file in the config file, "
                f"or give the service the systemd credential {CREDENTIAL_NAME} (LoadCredential=)"
            )
        return self.token.get_secret_value()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class UploadSettings(BaseModel):
    """[upload]: how rows become API calls."""

    model_config = _SECTION
    mode: Literal["sync", "async", "auto"] = "auto"
    data_key: Literal["extended_id", "serial_number"] = "extended_id"
    sync_batch_size: int = Field(default=100, ge=1, le=100)
    async_batch_size: int = Field(default=1000, ge=1, le=1000)
    empty_cells: Literal["skip", "clear"] = "skip"
    fields: list[str] = Field(default_factory=list)
    fields_template: str = ""  # path to the campaign's template.csv; absolute after loading, "" = none
    strict_fields: bool = False
    date_fields: list[str] = Field(default_factory=lambda: list(DEFAULT_DATE_FIELDS))  # field keys or *-patterns

    @field_validator("fields", "date_fields")
    @classmethod
    def _clean_fields(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(_nonblank(v, "entries must not be empty") for v in value))

    def dates(self, order: DateOrder) -> DateSettings:
        """The date rules row normalization applies, with the intake's date order."""
        return DateSettings(tuple(self.date_fields), order)


class IntakeSettings(BaseModel):
    """[intake]: how spreadsheets are read."""

    model_config = _SECTION
    sheet: str = ""
    date_order: DateOrder = ""  # how a year-last date whose day and month are both <= 12 is read; "" = refused
    # Limits on what a file may declare (issue 11): generous, so only a broken or hostile file meets them.
    max_rows: int = Field(default=1_048_576, ge=1)
    max_columns: int = Field(default=1024, ge=1)
    max_cell_chars: int = Field(default=32_767, ge=1)
    max_file_mb: int = Field(default=512, ge=1)
    # The process that reads each workbook (python-calamine) gets this address space (RLIMIT_AS) and time.
    max_reader_memory_mb: int = Field(default=1024, ge=128)
    max_read_seconds: float = Field(default=600, gt=0)

    def limits(self) -> "ReadLimits":
        """The limits as the readers take them (a field for each max_* setting)."""
        from daemon.readers.limits import ReadLimits  # noqa: PLC0415 (see the TYPE_CHECKING import)

        return ReadLimits(**{name: getattr(self, name) for name in ReadLimits.__dataclass_fields__})


class ReportsSettings(BaseModel):
    """[reports]: how report files are written for the people who open them."""

    model_config = _SECTION
    delimiter: Literal[",", ";", "\t", "|"] = ","  # report.csv of Excel inputs (a CSV input's report uses its own)
    xlsx: bool = False  # also write report.xlsx


class PathsSettings(BaseModel):
    """[paths]: the folders and the ledger (absolute after loading)."""

    model_config = _SECTION
    inbox: Path = Path("inbox")
    outbox: Path = Path("outbox")
    archive: Path = Path("archive")
    failed: Path = Path("failed")
    # A SQLite file, or a PostgreSQL database as postgresql://USER@HOST:PORT/DATABASE: never with its password,
    # which comes from ledger_password_file (or the systemd credential ledger-password).
    ledger: Path | str = Path("ledger.sqlite3")
    ledger_password_file: Path | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        # Path("") is the current folder: an empty setting is a mistake, not a request for ".".
        if isinstance(value, str):
            return _nonblank(value)
        return value

    @field_validator("ledger", mode="before")
    @classmethod
    def _file_or_url(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _nonblank(value)
        if isinstance(value, str) and is_url(value):
            parse_url(value)  # no password, a database named: else the message says what to fix
            return value
        return Path(value) if isinstance(value, str) else value

    @property
    def ledger_file(self) -> Path | None:
        """The SQLite ledger's file; None when the ledger is a PostgreSQL database."""
        return self.ledger if isinstance(self.ledger, Path) else None

    def ledger_target(self) -> LedgerTarget:
        """Where the ledger is, with the password read (from its file or credential) for a database server."""
        return ledger_target(self.ledger, self.ledger_password_file)


class WatchSettings(BaseModel):
    """[watch]: when a file in the inbox is ready to read."""

    model_config = _SECTION
    settle_seconds: float = Field(default=2.0, ge=0)
    rescan_seconds: Seconds = 30.0
    polling: bool = False
    ignore: list[str] = Field(default_factory=lambda: [".*", "~$*", "*.tmp", "*.part", "*.crdownload"])

    @field_validator("ignore")
    @classmethod
    def _clean_ignore(cls, value: list[str]) -> list[str]:
        return [_nonblank(v, "entries must not be empty") for v in value]


class PollSettings(BaseModel):
    """[poll]: how async tasks are followed."""

    model_config = _SECTION
    interval_seconds: Seconds = 5.0
    max_interval_seconds: Seconds = 60.0
    timeout_seconds: Seconds = 86400.0

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        _at_least(self, "interval_seconds", "max_interval_seconds")
        return self


class HaSettings(BaseModel):
    """[ha]: instances sharing one ledger: the leader's lease (daemon.lease)."""

    model_config = _SECTION
    lease_seconds: float = Field(default=20.0, ge=3.0, le=25.0)  # a leader silent this long is taken over
    renew_seconds: float = Field(default=5.0, ge=0.5)  # the leader renews, and a standby tries, this often
    # This instance's host in the lease; unset: hostname, boot id and pid namespace (daemon.lease.this_host). Only an
    # instance of the same host is taken over before its lease runs out, when its process is gone.
    host: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _renewed_in_time(self) -> Self:
        if self.renew_seconds * 3 > self.lease_seconds:
            raise ValueError(
                f"renew_seconds ({self.renew_seconds:g}) must be at most a third of lease_seconds "
                f"({self.lease_seconds:g}): a leader must renew a few times before its lease could expire"
            )
        return self

    @property
    def takeover_seconds(self) -> float:
        """The longest a standby waits after the leader died: its lease ran out, then the standby's next try."""
        return self.lease_seconds + self.renew_seconds


class RetrySettings(BaseModel):
    """[retry]: how transient errors are retried."""

    model_config = _SECTION
    max_attempts: int = Field(default=8, ge=1)
    base_delay_seconds: Seconds = 2.0
    max_delay_seconds: Seconds = 300.0
    breaker_failures: int = Field(default=10, ge=1)  # failed requests in a row that pause all sending
    breaker_cooldown_seconds: Seconds = 30.0  # the first pause; it doubles while the API keeps failing
    max_server_wait_seconds: Seconds = 3600.0  # a Retry-After is honoured up to this (a huge one must not park rows)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        _at_least(self, "base_delay_seconds", "max_delay_seconds")
        return self


def _clean_columns(value: dict[str, str]) -> dict[str, str]:
    """A [columns] table with its headings and keys trimmed; neither may be empty."""
    blank = [heading for heading, key in value.items() if not heading.strip() or not key.strip()]
    if blank:
        raise ValueError(f"heading {blank[0]!r}: neither the heading nor the field key may be empty")
    return {heading.strip(): key.strip() for heading, key in value.items()}


class RouteSettings(BaseModel):
    """[routes."FOLDER"]: settings for the files under one inbox subfolder, overriding [upload], [intake], [columns].

    Its keys are checked when the configuration is loaded (daemon.config.routes): upload keys and `sheet` are
    written flat in the route's table, headings in `[routes."FOLDER".columns]`.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    columns: dict[str, str] = Field(default_factory=dict)  # merged over the top-level [columns]

    @field_validator("columns")
    @classmethod
    def _clean_columns(cls, value: dict[str, str]) -> dict[str, str]:
        return _clean_columns(value)

    def overrides(self) -> dict[str, Any]:
        """The upload and intake keys this route sets, as written (after loading: checked and resolved)."""
        return dict(self.model_extra or {})


class MetricsSettings(BaseModel):
    """[metrics]: where /metrics (Prometheus) and /healthz are served; "" = off."""

    model_config = _SECTION
    listen: str = ""  # "127.0.0.1:9464", "[::1]:9464"; port 0 = any free port (tests)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        value = value.strip()
        if value:
            listen_address(value)
        return value

    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, or None when metrics are off."""
        return listen_address(self.listen) if self.listen else None


def listen_address(value: str) -> tuple[str, int]:
    """The (host, port) of a `host:port` address (IPv6 in brackets); ValueError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise ValueError(f"{value!r} is not host:port, e.g. 127.0.0.1:9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{value!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the port must be 0 to 65535")
    return host, int(port)


class RetentionSettings(BaseModel):
    """[retention]: how long inputs (archive/, failed/) and reports (outbox) are kept; unset = forever."""

    model_config = _SECTION
    archive_days: float | None = Field(default=None, gt=0)  # inputs in archive/ and failed/
    outbox_days: float | None = Field(default=None, gt=0)  # reports this daemon wrote into the outbox

    @property
    def enabled(self) -> bool:
        """Whether anything is ever removed."""
        return self.archive_days is not None or self.outbox_days is not None


NotifyOn = Literal["completed", "completed_with_errors", "failed", "duplicate"]  # the file statuses, as Outcome
_NOTIFY_ON: tuple[NotifyOn, ...] = ("completed_with_errors", "failed")


class NotifySettings(BaseModel):
    """[notify]: who is told when a file ends badly or uploads pause; off until a channel is set."""

    model_config = _SECTION
    on: list[NotifyOn] = Field(default_factory=lambda: list(_NOTIFY_ON))
    webhook_url: str = ""  # JSON POST with a `text` field (Slack, Teams); a secret: it is never logged
    command: list[str] = Field(default_factory=list)  # program and arguments; the summary's path is appended
    email_to: list[str] = Field(default_factory=list)
    email_from: str = ""  # "" = scm-daemon@<this host's name>
    smtp_host: str = ""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"  # none: only to a server on this machine
    smtp_username: str = ""
    smtp_password_file: str = ""
    smtp_ca_file: str = ""  # a CA bundle for a server with a private certificate; "" = the system's
    smtp_password: SecretStr | None = None  # only from SCM_NOTIFY__SMTP_PASSWORD, the file or the credential
    timeout_seconds: Seconds = 30.0  # one delivery (HTTP request, SMTP session, command run)
    max_attempts: int = Field(default=10, ge=1)
    retry_seconds: Seconds = 10.0  # the first wait after a failed delivery; it doubles ...
    max_retry_seconds: Seconds = 900.0  # ... up to this

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels configured, in a fixed order."""
        chosen = (("webhook", self.webhook_url), ("email", self.email_to), ("command", self.command))
        return tuple(name for name, value in chosen if value)

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook(cls, value: str) -> str:
        if not value.strip():
            return ""
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://hooks.slack.com/services/...")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ValueError("must use https:// (plain http is only allowed to 127.0.0.1 or localhost)")
        return value.strip()

    @field_validator("command", "email_to")
    @classmethod
    def _clean_lists(cls, value: list[str]) -> list[str]:
        return [_nonblank(v, "entries must not be empty") for v in value]

    @model_validator(mode="after")
    def _check_email(self) -> Self:
        _at_least(self, "retry_seconds", "max_retry_seconds")
        if not self.email_to:
            return self
        if not self.smtp_host.strip():
            raise ValueError("email_to needs smtp_host, the mail server to send through")
        if bad := [a for a in self.email_to if "@" not in a]:
            raise ValueError(f"email_to: {bad[0]!r} is not an e-mail address")
        if self.smtp_security == "none" and not _is_loopback(self.smtp_host.strip()):
            raise ValueError('smtp_security = "none" is only allowed to 127.0.0.1 or localhost; use starttls or tls')
        return self


class Settings(BaseSettings):
    """The whole configuration; build it with load_settings(), not directly."""

    model_config = SettingsConfigDict(
        env_prefix="SCM_", env_nested_delimiter="__", extra="forbid", frozen=True, case_sensitive=False
    )
    api: ApiSettings = ApiSettings()
    upload: UploadSettings = UploadSettings()
    intake: IntakeSettings = IntakeSettings()
    columns: dict[str, str] = Field(default_factory=dict)  # a file's heading -> the field key it means
    reports: ReportsSettings = ReportsSettings()
    paths: PathsSettings = PathsSettings()
    watch: WatchSettings = WatchSettings()
    poll: PollSettings = PollSettings()
    retry: RetrySettings = RetrySettings()
    routes: dict[str, RouteSettings] = Field(default_factory=dict)  # inbox subfolder (posix, relative) -> overrides
    metrics: MetricsSettings = MetricsSettings()
    retention: RetentionSettings = RetentionSettings()
    notify: NotifySettings = NotifySettings()
    ha: HaSettings = HaSettings()
    source: Path | None = None  # the config file that was read; None when only defaults and env were used

    @field_validator("columns")
    @classmethod
    def _clean_columns(cls, value: dict[str, str]) -> dict[str, str]:
        return _clean_columns(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # A bare Settings() is the defaults only; load_settings() passes its own file and env sources.
        return (init_settings,)


SECTIONS: dict[str, type[BaseModel]] = {
    "api": ApiSettings,
    "upload": UploadSettings,
    "intake": IntakeSettings,
    "reports": ReportsSettings,
    "paths": PathsSettings,
    "watch": WatchSettings,
    "poll": PollSettings,
    "retry": RetrySettings,
    "metrics": MetricsSettings,
    "retention": RetentionSettings,
    "notify": NotifySettings,
    "ha": HaSettings,
}
