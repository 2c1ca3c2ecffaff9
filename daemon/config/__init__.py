"""The daemon's configuration: the TOML file, SCM_ environment variables and the token, checked on load."""

from daemon.config.loading import find_config_file, load_settings, sandbox_settings
from daemon.config.models import (
    CREDENTIAL_NAME,
    SMTP_CREDENTIAL_NAME,
    SYSTEM_CONFIG,
    ApiSettings,
    ConfigError,
    IntakeSettings,
    MetricsSettings,
    NotifySettings,
    PathsSettings,
    PollSettings,
    ReportsSettings,
    RetentionSettings,
    RetrySettings,
    Settings,
    UploadSettings,
    WatchSettings,
)

__all__ = [
    "CREDENTIAL_NAME",
    "SMTP_CREDENTIAL_NAME",
    "SYSTEM_CONFIG",
    "ApiSettings",
    "ConfigError",
    "IntakeSettings",
    "MetricsSettings",
    "NotifySettings",
    "PathsSettings",
    "PollSettings",
    "ReportsSettings",
    "RetentionSettings",
    "RetrySettings",
    "Settings",
    "UploadSettings",
    "WatchSettings",
    "find_config_file",
    "load_settings",
    "sandbox_settings",
]
