"""Files the configuration names: paths made absolute, and secrets (the API token, the SMTP password) read
from the environment, a file or a systemd credential, in that order, with messages a person can act on."""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from daemon.config.models import CREDENTIAL_NAME, SMTP_CREDENTIAL_NAME, ApiSettings, ConfigError, NotifySettings
from daemon.logs import register_secret


def absolute(path: Path, base: Path) -> Path:
    """`path` with ~ expanded, relative to `base` unless absolute, normalized."""
    path = path.expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def register_notify_secrets(notify: NotifySettings) -> None:
    # A Slack or Teams webhook URL is itself a credential: whoever has it can post to the channel.
    register_secret(notify.webhook_url)
    if notify.smtp_password is not None:
        register_secret(notify.smtp_password.get_secret_value())


def token_settings(
    api: ApiSettings, base: Path, env: Mapping[str, str], origin: str, *, resolve: bool
) -> dict[str, Any]:
    """The token (env, else token_file, else the systemd credential) and token_file made absolute."""
    token_file, credential = _secret_source(api.token_file, base, env, CREDENTIAL_NAME)
    update: dict[str, Any] = {"token_file": str(token_file or ""), "token": None}
    if not resolve:
        return update
    if api.token is not None:
        update["token"] = _clean_token(api.token.get_secret_value(), "environment variable SCM_API__TOKEN")
    elif token_file is not None:
        update["token"] = _read_token(token_file, f"{origin}: api.token_file")
    elif credential is not None:
        update["token"] = _read_token(credential, "the systemd credential")
    return update


def _read_secret_file(file: Path, what: str, kind: str) -> str:
    """The text of a file that holds a secret (the token, the SMTP password), or a ConfigError saying why not."""
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{what}: cannot read the {kind} file {file} ({exc.strerror or type(exc).__name__}); "
            "check the path and that the service's user may read it"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: the {kind} file {file} is not UTF-8 text") from None


def _secret_source(
    configured: str, base: Path, env: Mapping[str, str], credential: str
) -> tuple[Path | None, Path | None]:
    """Where a secret is read from: (the configured file made absolute, else None; else the systemd credential
    if $CREDENTIALS_DIRECTORY has it, else None)."""
    file = absolute(Path(configured), base) if configured.strip() else None
    if file is None and env.get("CREDENTIALS_DIRECTORY"):
        candidate = Path(env["CREDENTIALS_DIRECTORY"]) / credential
        if candidate.exists():
            return None, candidate
    return file, None


def _read_token(file: Path, what: str) -> SecretStr:
    return _clean_token(_read_secret_file(file, what, "token"), f"{what}: the token file {file}")


def notify_settings(notify: NotifySettings, base: Path, env: Mapping[str, str], origin: str) -> NotifySettings:
    """[notify] with its files made absolute and the SMTP password read (env, else the file, else the credential)."""
    update: dict[str, Any] = {}
    for key in ("smtp_password_file", "smtp_ca_file"):
        value = getattr(notify, key)
        update[key] = str(absolute(Path(value), base)) if value.strip() else ""
    if notify.smtp_password is None:
        file, credential = _secret_source(notify.smtp_password_file, base, env, SMTP_CREDENTIAL_NAME)
        source = file or credential
        if source is not None:
            what = f"{origin}: notify.smtp_password_file" if file else "the systemd credential"
            text = _read_secret_file(source, what, "password").strip("\r\n")
            if not text:
                raise ConfigError(f"{what}: the password file {source} is empty; put the SMTP password there")
            update["smtp_password"] = SecretStr(text)
    password = update.get("smtp_password", notify.smtp_password)
    if notify.email_to and notify.smtp_username and password is None:
        raise ConfigError(
            f"{origin}: notify.smtp_username is set but no password was found: set notify.smtp_password_file, "
            f"SCM_NOTIFY__SMTP_PASSWORD or the systemd credential {SMTP_CREDENTIAL_NAME}"
        )
    return notify.model_copy(update=update)


def _clean_token(text: str, what: str) -> SecretStr:
    token = text.strip()
    if not token:
        raise ConfigError(f"{what} is empty; put the Scantrust API token there")
    if any(char.isspace() for char in token):
        # It would go into an HTTP header as is; a pasted "UAT <token>" or two lines is a mistake.
        raise ConfigError(f"{what} has whitespace inside the token; give the token alone, without 'UAT '")
    return SecretStr(token)
