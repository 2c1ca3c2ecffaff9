"""Load and check the daemon's configuration: TOML file, SCM_ environment variables, token sources."""

import csv
import difflib
import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from daemon.logs import register_secret

SYSTEM_CONFIG = Path("/etc/scm-daemon/config.toml")
CREDENTIAL_NAME = "scantrust-token"  # systemd LoadCredential=scantrust-token:/path/to/file
_KEY_COLUMNS = frozenset({"extended_id", "serial_number"})


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

    @field_validator("fields")
    @classmethod
    def _clean_fields(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(_nonblank(v, "entries must not be empty") for v in value))


class IntakeSettings(BaseModel):
    """[intake]: how spreadsheets are read."""

    model_config = _SECTION
    sheet: str = ""


class PathsSettings(BaseModel):
    """[paths]: the folders and the ledger (absolute after loading)."""

    model_config = _SECTION
    inbox: Path = Path("inbox")
    outbox: Path = Path("outbox")
    archive: Path = Path("archive")
    failed: Path = Path("failed")
    ledger: Path = Path("ledger.sqlite3")

    @field_validator("*", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        # Path("") is the current folder: an empty setting is a mistake, not a request for ".".
        if isinstance(value, str):
            return _nonblank(value)
        return value


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


class RetrySettings(BaseModel):
    """[retry]: how transient errors are retried."""

    model_config = _SECTION
    max_attempts: int = Field(default=8, ge=1)
    base_delay_seconds: Seconds = 2.0
    max_delay_seconds: Seconds = 300.0
    breaker_failures: int = Field(default=10, ge=1)  # failed requests in a row that pause all sending
    breaker_cooldown_seconds: Seconds = 30.0  # the first pause; it doubles while the API keeps failing

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        _at_least(self, "base_delay_seconds", "max_delay_seconds")
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
    paths: PathsSettings = PathsSettings()
    watch: WatchSettings = WatchSettings()
    poll: PollSettings = PollSettings()
    retry: RetrySettings = RetrySettings()
    source: Path | None = None  # the config file that was read; None when only defaults and env were used

    @field_validator("columns")
    @classmethod
    def _clean_columns(cls, value: dict[str, str]) -> dict[str, str]:
        blank = [heading for heading, key in value.items() if not heading.strip() or not key.strip()]
        if blank:
            raise ValueError(f"heading {blank[0]!r}: neither the heading nor the field key may be empty")
        return {heading.strip(): key.strip() for heading, key in value.items()}

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
    "paths": PathsSettings,
    "watch": WatchSettings,
    "poll": PollSettings,
    "retry": RetrySettings,
}
_ALL_SECTIONS = [*SECTIONS, "columns"]
_LIST_KEYS = {("upload", "fields"), ("watch", "ignore")}
_EnvNames = dict[tuple[str, str | None], str]  # (section, key or None for the whole section) -> variable name


class _TomlFile(TomlConfigSettingsSource):
    """The TOML source, with read and syntax errors turned into ConfigError."""

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        try:
            return super()._read_file(file_path)
        except tomllib.TOMLDecodeError as exc:
            # The message carries the line and column; the line's text is not echoed (it may hold a secret).
            raise ConfigError(f"{file_path}: not valid TOML: {exc}; fix the syntax there") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file_path}: not UTF-8 text; save it as UTF-8") from None
        except OSError as exc:
            raise ConfigError(f"{file_path}: cannot be read ({exc.strerror or exc})") from None


class _MappingEnvSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._given = {name.lower(): value for name, value in env.items()}  # case_sensitive=False
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return self._given


def find_config_file(
    cli_value: str | None,
    env: Mapping[str, str] = os.environ,
    cwd: Path | None = None,
    *,
    system: Path = SYSTEM_CONFIG,
) -> Path | None:
    """The config file to read: -c FILE, else $SCM_CONFIG, else ./config.toml, else the system one."""
    here = cwd if cwd is not None else Path.cwd()
    for given, how in ((cli_value, "given with -c"), (env.get("SCM_CONFIG") or None, "from $SCM_CONFIG")):
        if given is not None:
            path = here / Path(given).expanduser()
            if path.is_file():
                return path
            fix = "check the path" if how.endswith("-c") else "fix or unset SCM_CONFIG"
            state = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise ConfigError(f"config file {path} ({how}) {state}; {fix}")
    for candidate in (here / "config.toml", system):
        if candidate.is_file():
            return candidate
    return None


def load_settings(path: Path | None, *, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from the TOML file (or defaults) overridden by SCM_<SECTION>__<KEY> variables in env."""
    settings = _load(path, os.environ if env is None else env, resolve_token=True)
    if settings.api.token is not None:
        register_secret(settings.api.token.get_secret_value())
    return settings


def sandbox_settings(path: Path | None, *, base_url: str, token: str, env: Mapping[str, str] | None = None) -> Settings:
    """Settings for `run --sandbox`: loaded as usual, but pointed at the emulator with its token.

    The real token is not read. Without a file the folders are ./inbox, ./outbox, ... as always.
    """
    settings = _load(path, os.environ if env is None else env, resolve_token=False)
    try:
        api = ApiSettings.model_validate(
            {**settings.api.model_dump(exclude={"token"}), "base_url": base_url, "token": token}
        )
    except ValidationError as exc:
        raise ConfigError(f"sandbox: {_describe(exc, None, {})}") from None
    return settings.model_copy(update={"api": api})


def _load(path: Path | None, env: Mapping[str, str], *, resolve_token: bool) -> Settings:
    env_vars = _scm_variables(env)
    sources: list[PydanticBaseSettingsSource] = [
        _MappingEnvSource(Settings, {name: env[name] for name in env_vars.values()})
    ]
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; create it from config.example.toml")
        toml = _TomlFile(Settings, toml_file=path)
        _check_file_keys(toml.toml_data, path)
        sources.append(toml)
    try:
        raw = Settings(_build_sources=(tuple(sources), {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, env_vars)) from None
    except SettingsError as exc:
        raise ConfigError(f"environment: {exc}") from None

    base = path.absolute().parent if path is not None else Path.cwd()
    where = str(path) if path is not None else "the environment"
    paths = raw.paths.model_copy(
        update={name: _absolute(getattr(raw.paths, name), base) for name in PathsSettings.model_fields}
    )
    _check_distinct(paths, where)
    token_origin = _origin("api", "token_file", path, env_vars)
    api = raw.api.model_copy(update=_token_settings(raw.api, base, env, token_origin, resolve=resolve_token))
    upload = _with_template(raw.upload, base, _origin("upload", "fields_template", path, env_vars))
    _check_fields(upload, raw.columns, where)
    return raw.model_copy(update={"paths": paths, "api": api, "upload": upload, "source": path})


def _scm_variables(env: Mapping[str, str]) -> _EnvNames:
    """Map (section, key or None) to the SCM_ variable that sets it; refuse names that mean nothing."""
    found: _EnvNames = {}
    for name, value in env.items():
        if not name.upper().startswith("SCM_"):
            continue
        section, nested, key = name[4:].lower().partition("__")
        if not nested:
            if section in _ALL_SECTIONS:  # a section as JSON: SCM_COLUMNS='{"Serial No.": "serial_number"}'
                found[(section, None)] = name
            continue  # SCM_CONFIG, or someone else's variable
        if section not in _ALL_SECTIONS:
            hint = _hint(section, _ALL_SECTIONS)
            raise ConfigError(f"environment variable {name}: unknown section '{section}'{hint}")
        if section != "columns":
            if key not in SECTIONS[section].model_fields:
                raise ConfigError(
                    f"environment variable {name}: unknown key '{section}.{key}'{_hint(key, _keys(section))}"
                )
            if (section, key) in _LIST_KEYS and not _is_json_list(value):
                raise ConfigError(f'environment variable {name}: must be a JSON list such as ["a", "b"]')
        found[(section, key)] = name
    return found


def _is_json_list(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _keys(section: str) -> list[str]:
    return list(SECTIONS[section].model_fields)


def _hint(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _check_file_keys(data: Mapping[str, Any], path: Path) -> None:
    """Refuse unknown sections and keys, keys outside a section, and a token written in the file."""
    problems = []
    for name, value in data.items():
        if name not in _ALL_SECTIONS:
            owner = next((s for s in SECTIONS if name in SECTIONS[s].model_fields), None)
            if owner is not None and not isinstance(value, dict):
                problems.append(f"{path}: key '{name}' is outside any section; move it under [{owner}]")
            else:
                problems.append(f"{path}: unknown section [{name}]{_hint(name, _ALL_SECTIONS)}")
        elif not isinstance(value, dict):
            problems.append(f"{path}: '{name}' must be a section written as [{name}], not a single value")
        elif name == "api" and "token" in value:
            problems.append(
                f"{path}: api.token must not be written in the config file (config files get copied and "
                "shared); put the token in a file only the service can read and set api.token_file, or set "
                f"the environment variable SCM_API__TOKEN, or use the systemd credential {CREDENTIAL_NAME}"
            )
        if name in SECTIONS and isinstance(value, dict):
            for key in value:
                if key not in SECTIONS[name].model_fields:
                    owner = next((s for s in SECTIONS if key in SECTIONS[s].model_fields), None)
                    hint = f"; it belongs in [{owner}]" if owner else _hint(key, _keys(name))
                    problems.append(f"{path}: unknown key '{name}.{key}'{hint}")
    if problems:
        raise ConfigError("\n".join(problems))


_RULES = {
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text in quotes",
    "list_type": 'must be a list, like ["a", "b"]',
    "dict_type": 'must be a table of "heading" = "field key"',
    "literal_error": "must be one of {expected}",
    "extra_forbidden": "is not a known key",
}


def _describe(exc: ValidationError, path: Path | None, env_vars: _EnvNames) -> str:
    """One line per problem: where it came from, the key, the value (never the token's) and the rule."""
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in error.get("ctx", {}).items()}
        rule = _RULES.get(error["type"], "{msg}").format(**ctx, msg=error["msg"])
        rule = rule.removeprefix("Value error, ")
        if len(loc) == 1:  # a rule across keys of one section
            lines.append(f"{_origin(loc[0], None, path, env_vars)}: [{loc[0]}] {rule}")
            continue
        # An unknown key's value may be a misspelt token: show neither it nor any token-like key's value.
        secretive = loc[1] == "token" or error["type"] == "extra_forbidden"
        shown = "***" if secretive else _show(error["input"])
        origin = _origin(loc[0], loc[1], path, env_vars)
        lines.append(f"{origin}: {'.'.join(loc)} = {shown} is not valid: {rule}")
    return "\n".join(lines)


def _origin(section: str, key: str | None, path: Path | None, env_vars: _EnvNames) -> str:
    """Which variable or file a value came from (the environment wins over the file)."""
    file = [str(path)] if path is not None else []
    if key is None:  # a rule across keys: any of them may be the culprit
        names = [f"environment variable {name}" for (s, _), name in env_vars.items() if s == section]
        return " and ".join(file + names) or "the defaults"
    name = env_vars.get((section, key)) or (env_vars.get((section, None)) if not file else None)
    return f"environment variable {name}" if name else (file or ["the environment"])[0]


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)  # inf and nan as TOML writes them
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _absolute(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def _check_distinct(paths: PathsSettings, where: str) -> None:
    seen: dict[Path, str] = {}
    for name in PathsSettings.model_fields:
        value = getattr(paths, name)
        if value in seen:
            raise ConfigError(
                f"{where}: paths.{name} and paths.{seen[value]} are both {value}; give each its own place"
            )
        seen[value] = name


def _token_settings(
    api: ApiSettings, base: Path, env: Mapping[str, str], origin: str, *, resolve: bool
) -> dict[str, Any]:
    """The token (env, else token_file, else the systemd credential) and token_file made absolute."""
    token_file = _absolute(Path(api.token_file), base) if api.token_file.strip() else None
    update: dict[str, Any] = {"token_file": str(token_file or ""), "token": None}
    if not resolve:
        return update
    if api.token is not None:
        update["token"] = _clean_token(api.token.get_secret_value(), "environment variable SCM_API__TOKEN")
    elif token_file is not None:
        update["token"] = _read_token(token_file, f"{origin}: api.token_file")
    elif env.get("CREDENTIALS_DIRECTORY"):
        credential = Path(env["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME
        if credential.exists():
            update["token"] = _read_token(credential, "the systemd credential")
    return update


def _read_token(file: Path, what: str) -> SecretStr:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{what}: cannot read the token file {file} ({exc.strerror or type(exc).__name__}); "
            "check the path and that the service's user may read it"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: the token file {file} is not UTF-8 text") from None
    return _clean_token(text, f"{what}: the token file {file}")


def _clean_token(text: str, what: str) -> SecretStr:
    token = text.strip()
    if not token:
        raise ConfigError(f"{what} is empty; put the Scantrust API token there")
    if any(char.isspace() for char in token):
        # It would go into an HTTP header as is; a pasted "UAT <token>" or two lines is a mistake.
        raise ConfigError(f"{what} has whitespace inside the token; give the token alone, without 'UAT '")
    return SecretStr(token)


def _with_template(upload: UploadSettings, base: Path, origin: str) -> UploadSettings:
    """Merge the header of upload.fields_template into upload.fields (key columns left out)."""
    if not upload.fields_template.strip():
        return upload
    template = _absolute(Path(upload.fields_template), base)
    try:
        with template.open(encoding="utf-8-sig", newline="") as handle:
            first = handle.readline()
    except OSError as exc:
        raise ConfigError(
            f"{origin}: upload.fields_template: cannot read {template} ({exc.strerror or exc}); "
            "download template.csv from the campaign's SCM T&T tab or fix the path"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{origin}: upload.fields_template: {template} is not UTF-8 text") from None
    delimiter = max(",;\t|", key=first.count)
    header = next(csv.reader([first], delimiter=delimiter), [])
    keys = [cell.strip() for cell in header if cell.strip() and cell.strip().lower() not in _KEY_COLUMNS]
    if not keys:
        raise ConfigError(f"{origin}: upload.fields_template: {template} has no field keys in its first line")
    fields = list(dict.fromkeys([*upload.fields, *keys]))
    return upload.model_copy(update={"fields": fields, "fields_template": str(template)})


def _check_fields(upload: UploadSettings, columns: Mapping[str, str], where: str) -> None:
    if upload.strict_fields and not upload.fields:
        raise ConfigError(f"{where}: upload.strict_fields = true needs upload.fields or upload.fields_template")
    if upload.fields:
        known = set(upload.fields) | _KEY_COLUMNS
        for heading, key in columns.items():
            if key not in known:
                raise ConfigError(
                    f'{where}: columns."{heading}" = "{key}" is unknown{_hint(key, sorted(known))}; '
                    "use one of upload.fields, extended_id or serial_number"
                )
