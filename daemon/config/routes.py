"""Routes: the inbox subfolder a file lies in picks its settings ([routes."LineA"] over [upload], [intake], ...)."""

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from daemon.config.models import SECTIONS, IntakeSettings, RouteSettings, Settings, UploadSettings
from daemon.names import skipped_folder

TOP_LEVEL = "(top level)"  # what `validate` and `check` print for a file that no route names


def route_keys() -> dict[str, str]:
    """Each key a route may set, and the section it overrides: every [upload] key, and the [intake] keys about
    how a file is read (`sheet`, ...), not the service-wide limits (`max_*`)."""
    keys = {k: "intake" for k in IntakeSettings.model_fields if not k.startswith("max_")}
    keys.update({k: "upload" for k in UploadSettings.model_fields})
    return keys


def route_of(routes: Iterable[str], name: str) -> str | None:
    """The route of a file at `name` (its posix path relative to the inbox): the deepest route key that is one of
    its folders; None for a file no route names (it uses the top-level settings)."""
    folders = {p.as_posix() for p in PurePosixPath(name).parents}
    matching = [key for key in routes if key in folders]
    return max(matching, key=lambda key: key.count("/"), default=None)


def settings_for(settings: Settings, name: str) -> Settings:
    """The settings a file at `name` (relative to the inbox) is read and planned with: its route's over the rest."""
    key = route_of(settings.routes, name)
    return settings if key is None else apply_route(settings, settings.routes[key])


def apply_route(settings: Settings, route: RouteSettings) -> Settings:
    """`settings` with a route's overrides: its upload and intake keys replace, its [columns] add to the top's."""
    sections = route_keys()
    given = route.overrides()
    update: dict[str, Any] = {}
    for section in ("upload", "intake"):
        changed = {k: v for k, v in given.items() if sections.get(k) == section}
        if changed:
            model: UploadSettings | IntakeSettings = getattr(settings, section)
            update[section] = type(model).model_validate({**model.model_dump(), **changed})
    if route.columns:
        update["columns"] = {**settings.columns, **route.columns}
    return settings.model_copy(update=update) if update else settings


def key_problem(key: str, inbox: Path, ignore: Sequence[str]) -> str | None:
    """Why a route key does not name a folder inside the inbox that the scan reaches, with the fix; None if it does."""
    fix = 'name a folder inside the inbox, relative to it, like [routes."LineA"] or [routes."LineA/Station 2"]'
    if key.strip() in ("", "."):
        return f"names the inbox itself, whose files use the top-level settings; {fix}"
    if "\\" in key:
        return f"write folders with '/' between them; {fix}"
    if key.startswith("/"):
        given = Path(key)
        if given == inbox or inbox in given.parents:
            return f'write it relative to the inbox: [routes."{given.relative_to(inbox).as_posix()}"]'
        return f"is outside the inbox {inbox}; {fix}"
    parts = key.split("/")
    if ".." in parts:
        return f"'..' would leave the inbox (or go round in it); {fix}"
    if "" in parts or "." in parts or key != key.strip():
        clean = "/".join(p.strip() for p in parts if p.strip() not in ("", "."))
        return f'write it as [routes."{clean}"], without empty parts, "." or surrounding spaces'
    for part in parts:
        why = skipped_folder(part, ignore)
        if why is not None:
            return f"files in folder '{part}' are never taken ({why}); rename the folder or change watch.ignore"
    return None


def unknown_key_problem(key: str) -> str | None:
    """Why a key in a route's table is not one a route may set, with the fix; None for a known key."""
    if key in route_keys() or key == "columns":
        return None
    owner = next((s for s, model in SECTIONS.items() if key in model.model_fields), None)
    if owner is not None:
        return f"{owner}.{key} applies to the whole service; set it in [{owner}], not in a route"
    close = difflib.get_close_matches(key, [*route_keys(), "columns"], n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"is not a key a route may set{hint} (a route sets [upload] keys, sheet, and [columns])"


def describe_route(settings: Settings, key: str | None) -> str:
    """One line for a person: a route and what it overrides, or the top level."""
    if key is None:
        return f"{TOP_LEVEL}: the [upload], [intake] and [columns] settings"
    route = settings.routes[key]
    changed = [f"{k} = {_short(v)}" for k, v in route.overrides().items() if k != "fields_template" or v]
    if route.columns:
        changed.append(f"columns: {', '.join(f'{h!r} -> {f}' for h, f in route.columns.items())}")
    return f'routes."{key}": ' + ("; ".join(changed) or "no overrides")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def route_tables(data: Mapping[str, Any]) -> list[str]:
    """Problems with the shape of a TOML [routes] section: each entry must be a table."""
    return [
        f'[routes."{key}"] must be a table of settings, like [routes."{key}"] with mode = "sync" below it'
        for key, value in data.items()
        if not isinstance(value, dict)
    ]


def name_for_validation(path: Path, inbox: Path, route: str | None) -> str:
    """The inbox name `validate` gives a file, which picks its route: `route/NAME` when a route is asked for,
    its path relative to the inbox when it lies there, else its bare name (the top-level settings)."""
    if route is not None:
        return f"{route}/{path.name}"
    absolute = Path(os.path.abspath(path))
    if inbox in absolute.parents:
        return absolute.relative_to(inbox).as_posix()
    return path.name


def route_overview(settings: Settings) -> list[str]:
    """What `check` says about the routes: each one's folder, whether the scan reaches it, what it overrides."""
    inbox = settings.paths.inbox
    lines = [f"route: files directly in the inbox, and in folders no route names: {describe_route(settings, None)}"]
    for key in sorted(settings.routes):
        parts = key.split("/")
        steps = [inbox.joinpath(*parts[: i + 1]) for i in range(len(parts))]
        linked = next((step for step in steps if step.is_symlink()), None)
        if linked is not None:
            state = f" (WARNING: {linked} is a symlink, which the scan does not follow; make it a real folder)"
        else:
            state = "" if steps[-1].is_dir() else " (not there yet: files dropped there once it exists take it)"
        lines.append(f"route: {steps[-1]}/{state} takes {describe_route(settings, key)}")
    return lines
