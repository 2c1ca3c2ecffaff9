"""Load the configuration: TOML file, SCM_ environment variables, token sources, messages a person can act on."""

import csv
import difflib
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from daemon.config.files import absolute, notify_settings, register_notify_secrets, token_settings
from daemon.config.models import (
    CREDENTIAL_NAME,
    KEY_COLUMNS,
    SECTIONS,
    SMTP_CREDENTIAL_NAME,
    SYSTEM_CONFIG,
    ApiSettings,
    ConfigError,
    PathsSettings,
    RouteSettings,
    Settings,
    UploadSettings,
)
from daemon.config.routes import apply_route, key_problem, route_keys, route_tables, unknown_key_problem
from daemon.ledger.dialect import is_url, url_shown
from daemon.logs import register_secret

_ALL_SECTIONS = [*SECTIONS, "columns", "routes"]
_SECRET_KEYS = {"token", "smtp_password", "webhook_url"}  # values never shown in a message
_EnvNames = dict[tuple[str, str | None], str]  # (section, key or None for the whole section) -> variable name


def _read_toml(path: Path) -> dict[str, Any]:
    """The TOML file's tables, with read and syntax errors turned into ConfigError."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        # The message carries the line and column; the line's text is not echoed (it may hold a secret).
        raise ConfigError(f"{path}: not valid TOML: {exc}; fix the syntax there") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _env_tables(env: Mapping[str, str], env_vars: _EnvNames) -> dict[str, dict[str, Any]]:
    """The SCM_ variables as tables like the TOML file's: lists and tables are given as JSON."""
    tables: dict[str, dict[str, Any]] = {}
    for (section, key), name in sorted(env_vars.items(), key=lambda item: item[0][1] is not None):
        value: Any = env[name]
        if key is None:  # a whole section as JSON; single keys given beside it win
            tables[section] = {**_json_table(value, name), **tables.get(section, {})}
            continue
        annotation = SECTIONS[section].model_fields[key].annotation if section != "columns" else str
        if _is_complex(annotation):
            value = _json_value(value, name, "list" if typing.get_origin(annotation) is list else "table")
        tables.setdefault(section, {})[key] = value
    return tables


def _is_complex(annotation: Any) -> bool:
    """A list, set or table (or an optional one): given as JSON in an environment variable."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_complex(arg) for arg in typing.get_args(annotation) if arg is not type(None))
    return origin in (list, set, tuple, dict) or (isinstance(annotation, type) and issubclass(annotation, BaseModel))


def _json_value(text: str, name: str, kind: str) -> Any:
    example = '["a", "b"]' if kind == "list" else '{"a": "b"}'
    try:
        return json.loads(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}: must be a JSON {kind} such as {example}") from None


def _json_table(text: str, name: str) -> dict[str, Any]:
    value = _json_value(text, name, "table")
    if not isinstance(value, dict):
        raise ConfigError(f'environment variable {name}: must be a JSON table such as {{"a": "b"}}')
    return value


def _merged(file: Mapping[str, Any], env: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The file's tables with the environment's keys laid over them (the environment wins)."""
    merged = dict(file)
    for section, values in env.items():
        below = merged.get(section)
        merged[section] = {**below, **values} if isinstance(below, dict) else values
    return merged


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
    register_notify_secrets(settings.notify)
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
    register_notify_secrets(settings.notify)
    return settings.model_copy(update={"api": api})


def _load(path: Path | None, env: Mapping[str, str], *, resolve_token: bool) -> Settings:
    env_vars = _scm_variables(env)
    file: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; create it from config.example.toml")
        file = _read_toml(path)
        _check_file_keys(file, path)
    try:
        # Settings reads no source of its own (settings_customise_sources keeps only the values given here).
        raw = Settings(**_merged(file, _env_tables(env, env_vars)))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, env_vars)) from None

    base = path.absolute().parent if path is not None else Path.cwd()
    where = str(path) if path is not None else "the environment"
    paths = raw.paths.model_copy(
        update={
            name: absolute(value, base)
            for name in PathsSettings.model_fields
            if isinstance(value := getattr(raw.paths, name), Path)
        }
    )
    _check_distinct(paths, where)
    token_origin = _origin("api", "token_file", path, env_vars)
    api = raw.api.model_copy(update=token_settings(raw.api, base, env, token_origin, resolve=resolve_token))
    upload = _with_template(raw.upload, base, _origin("upload", "fields_template", path, env_vars))
    _check_fields(upload, raw.columns, where)
    notify = notify_settings(raw.notify, base, env, _origin("notify", "smtp_password_file", path, env_vars))
    settings = raw.model_copy(update={"paths": paths, "api": api, "upload": upload, "notify": notify, "source": path})
    routes = {key: _check_route(settings, key, route, base, where) for key, route in raw.routes.items()}
    return settings.model_copy(update={"routes": routes})


def _check_route(settings: Settings, key: str, route: RouteSettings, base: Path, where: str) -> RouteSettings:
    """A route checked against the inbox and the rules of the keys it overrides, its fields_template read."""
    name = f'routes."{key}"'
    problem = key_problem(key, settings.paths.inbox, settings.watch.ignore)
    if problem is not None:
        raise ConfigError(f"{where}: [{name}] {problem}")
    given = route.overrides()
    problems = [f"{where}: {name}.{k} {p}" for k in given if (p := unknown_key_problem(k)) is not None]
    if problems:
        raise ConfigError("\n".join(problems))
    if given.get("fields_template") and "fields" not in given:
        given["fields"] = []  # the route's campaign: the template's keys, not the top level's fields
    elif "fields" in given and "fields_template" not in given:
        given["fields_template"] = ""
    try:
        effective = apply_route(settings, RouteSettings.model_validate({**given, "columns": route.columns}))
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in error.get("ctx", {}).items()}
            rule = _RULES.get(error["type"], "{msg}").format(**ctx, msg=error["msg"]).removeprefix("Value error, ")
            field = str(error["loc"][0]) if error["loc"] else "?"
            lines.append(f"{where}: {name}.{field} = {_show(given.get(field))} is not valid: {rule}")
        raise ConfigError("\n".join(lines)) from None
    upload = _with_template(effective.upload, base, f"{where}: {name}") if given.get("fields_template") else None
    if upload is not None:
        given.update(fields=upload.fields, fields_template=upload.fields_template)
        effective = effective.model_copy(update={"upload": upload})
    # Only the route's own headings: a top-level heading for a field this route's campaign lacks is the top's.
    _check_fields(effective.upload, route.columns, f"{where}: {name}")
    sections = route_keys()
    resolved = {k: getattr(getattr(effective, sections[k]), k) for k in given}
    return RouteSettings.model_validate({**resolved, "columns": route.columns})


def _scm_variables(env: Mapping[str, str]) -> _EnvNames:
    """Map (section, key or None) to the SCM_ variable that sets it; refuse names that mean nothing."""
    found: _EnvNames = {}
    for name in env:
        if not name.upper().startswith("SCM_"):
            continue
        section, nested, key = name[4:].lower().partition("__")
        if nested and section == "routes":
            # Folder names keep their case only inside a value: the whole section is one JSON variable.
            raise ConfigError(
                f"environment variable {name}: routes are set as a whole, in JSON: "
                'SCM_ROUTES=\'{"LineA": {"mode": "sync"}}\''
            )
        if not nested:
            if section in _ALL_SECTIONS:  # a section as JSON: SCM_COLUMNS='{"Serial No.": "serial_number"}'
                found[(section, None)] = name
            continue  # SCM_CONFIG, or someone else's variable
        if section not in _ALL_SECTIONS:
            hint = _hint(section, _ALL_SECTIONS)
            raise ConfigError(f"environment variable {name}: unknown section '{section}'{hint}")
        if section != "columns" and key not in SECTIONS[section].model_fields:
            raise ConfigError(f"environment variable {name}: unknown key '{section}.{key}'{_hint(key, _keys(section))}")
        found[(section, key)] = name
    return found


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
        elif name == "routes":
            problems.extend(f"{path}: {problem}" for problem in route_tables(value))
        elif name == "notify" and "smtp_password" in value:
            problems.append(
                f"{path}: notify.smtp_password must not be written in the config file; put it in a file only the "
                "service can read and set notify.smtp_password_file, or set SCM_NOTIFY__SMTP_PASSWORD, or use the "
                f"systemd credential {SMTP_CREDENTIAL_NAME}"
            )
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
        secretive = loc[1] in _SECRET_KEYS or error["type"] == "extra_forbidden"
        shown = "***" if secretive else _show(error["input"])
        if loc[:2] == ["paths", "ledger"] and isinstance(error["input"], str) and is_url(error["input"]):
            shown = _show(url_shown(error["input"]))  # a password put in the URL by mistake stays unsaid
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


def _check_distinct(paths: PathsSettings, where: str) -> None:
    seen: dict[Path, str] = {}
    for name in PathsSettings.model_fields:
        value = getattr(paths, name)
        if not isinstance(value, Path):
            continue  # a database URL, or a file not set
        if value in seen:
            raise ConfigError(
                f"{where}: paths.{name} and paths.{seen[value]} are both {value}; give each its own place"
            )
        seen[value] = name


def _with_template(upload: UploadSettings, base: Path, origin: str) -> UploadSettings:
    """Merge the header of upload.fields_template into upload.fields (key columns left out)."""
    if not upload.fields_template.strip():
        return upload
    template = absolute(Path(upload.fields_template), base)
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
    keys = [cell.strip() for cell in header if cell.strip() and cell.strip().lower() not in KEY_COLUMNS]
    if not keys:
        raise ConfigError(f"{origin}: upload.fields_template: {template} has no field keys in its first line")
    fields = list(dict.fromkeys([*upload.fields, *keys]))
    return upload.model_copy(update={"fields": fields, "fields_template": str(template)})


def _check_fields(upload: UploadSettings, columns: Mapping[str, str], where: str) -> None:
    if upload.strict_fields and not upload.fields:
        raise ConfigError(f"{where}: upload.strict_fields = true needs upload.fields or upload.fields_template")
    if upload.fields:
        known = set(upload.fields) | KEY_COLUMNS
        for heading, key in columns.items():
            if key not in known:
                raise ConfigError(
                    f'{where}: columns."{heading}" = "{key}" is unknown{_hint(key, sorted(known))}; '
                    "use one of upload.fields, extended_id or serial_number"
                )
