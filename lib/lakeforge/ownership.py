"""The folders lakeforge makes, marked as its own, and the only ones it ever deletes.

lakeforge creates its folders (paths.landing, paths.lakehouse, paths.reports, paths.model_cache, a file:// MLflow
artifact root, the folder of a sqlite MLflow store) through `claim`, which leaves a marker file,
`.lakeforge-owned`, in each folder it creates: JSON with the project id (settings `project`), the
setting the folder is for, when, and by whom. A folder that already existed is used but never
marked: lakeforge did not make it. A sqlite store lakeforge creates gets the same marker next to
it (`.<file name>.lakeforge-owned`), since a file cannot hold one.

`remove` (what `lakeforge demo --fresh` runs) deletes a folder or store only when its marker names
this project and it lies inside the project folder (the folder lakeforge runs in, unless
paths.allow_outside_project is true). Everything is checked before anything is deleted: one
refusal and nothing goes, and the error names each folder, why, and what to do. `check_replace`
applies the same rule before `generate` replaces the demo's source folders in paths.landing.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import shutil
import socket
from pathlib import Path

from lakeforge import __version__
from lakeforge.config import Settings, file_uri_path, sqlite_path
from lakeforge.errors import DeletionRefused

MARKER = ".lakeforge-owned"
SQLITE = "mlflow.tracking_uri"


def managed(settings: Settings) -> dict[str, Path]:
    """Every place lakeforge keeps data for these settings, by setting: folders, and the sqlite store's file."""
    places = {"paths.landing": settings.paths.landing, "paths.lakehouse": settings.paths.lakehouse,
              "paths.reports": settings.paths.reports, "paths.model_cache": settings.paths.model_cache}
    artifacts = file_uri_path(settings.mlflow.artifact_root)
    if artifacts is not None:
        places["mlflow.artifact_root"] = artifacts
    store = sqlite_path(settings.mlflow.tracking_uri)
    if store is not None:
        places[SQLITE] = store
    return places


def file_marker(path: Path) -> Path:
    """The marker that says lakeforge created the file `path` (it sits next to it)."""
    return path.with_name(f".{path.name}{MARKER}")


def claim(settings: Settings, *keys: str) -> None:
    """Create the folders of these settings if missing, marking each one this call creates as this project's.

    For the sqlite store (mlflow.tracking_uri) its folder is claimed, and the store gets its own marker when
    it does not exist yet (MLflow creates the file on first use).
    """
    places = managed(settings)
    for key in keys:
        if key not in places:
            continue  # e.g. an http:// tracking server or an s3:// artifact root: nothing local to make
        if key == SQLITE:
            store = places[key]
            _claim_folder(store.parent, f"{key} (folder)", settings.project)
            if not store.exists() and not file_marker(store).exists():
                _write_marker(file_marker(store), key, settings.project, store)
        else:
            _claim_folder(places[key], key, settings.project)


def _claim_folder(folder: Path, key: str, project: str) -> None:
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:  # another process made it a moment ago: its marker (or none) stands
        return
    _write_marker(folder / MARKER, key, project, folder)


def _write_marker(marker: Path, key: str, project: str, what: Path) -> None:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry (some containers)
        user = str(os.getuid())
    record = {"lakeforge_owned": 1, "project": project, "setting": key, "path": str(what),
              "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "created_by": {"user": user, "host": socket.gethostname(), "pid": os.getpid()},
              "lakeforge_version": __version__}
    partial = marker.with_name(marker.name + ".partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, marker)  # a reader never sees half a marker


def read_marker(marker: Path) -> dict | None:
    """The marker's record, None when it is missing, not a regular file or not lakeforge's JSON."""
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("lakeforge_owned") == 1 else None


def refusal(path: Path, project: str, inside: Path | None, is_file: bool = False) -> str | None:
    """Why lakeforge must not delete `path` (None: it may). `inside`: the folder it must lie in (None: anywhere)."""
    marker = file_marker(path) if is_file else path / MARKER
    if path.is_symlink():
        return "it is a symbolic link"
    if inside is not None and not path.resolve().is_relative_to(inside.resolve()):
        return (f"it is outside the project folder {inside.resolve()} "
                f"(set paths.allow_outside_project: true to allow deletes there)")
    record = read_marker(marker)
    if record is None:
        return f"lakeforge did not create it (no readable {marker.name} marker {'next to' if is_file else 'in'} it)"
    if record.get("project") != project:
        return (f"another lakeforge project created it (its marker names project {record.get('project')!r}, "
                f"this one is {project!r})")
    return None


def check_replace(settings: Settings, key: str, parts: list[Path], project_dir: Path) -> None:
    """Raise DeletionRefused when any of `parts` (folders in the `key` folder about to be deleted and written again)
    exists and the `key` folder is not this project's to delete, as `remove` judges it."""
    folder, existing = managed(settings)[key], [p for p in parts if p.exists() or p.is_symlink()]
    inside = None if settings.paths.allow_outside_project else project_dir
    why = refusal(folder, settings.project, inside) if existing else None
    if why:
        raise DeletionRefused(f"refusing to replace {', '.join(str(p) for p in existing)}: {key} {folder}: {why}. "
                              f"lakeforge deletes only folders it created for this project; move them away or "
                              f"delete them by hand if you are sure, or point {key} at another folder")


def remove(settings: Settings, project_dir: Path) -> list[Path]:
    """Delete every managed folder and sqlite store of these settings that this project made; return what went.

    Each must lie in `project_dir` (the folder lakeforge runs in) unless paths.allow_outside_project. Raises
    DeletionRefused, deleting nothing, when any of them exists but is not this project's to delete.
    """
    inside = None if settings.paths.allow_outside_project else project_dir
    places = {key: path for key, path in managed(settings).items() if path.exists() or path.is_symlink()}
    refused = {key: why for key, path in places.items()
               if (why := refusal(path, settings.project, inside, is_file=key == SQLITE))}
    if refused:
        lines = "; ".join(f"{key} {places[key]}: {why}" for key, why in refused.items())
        raise DeletionRefused(f"refusing to delete anything: {lines}. lakeforge deletes only folders it created "
                              f"for this project; delete these by hand if you are sure, or point the settings "
                              f"at other folders")
    for key, path in places.items():
        if key == SQLITE:
            for part in (path, *(path.with_name(path.name + s) for s in ("-journal", "-wal", "-shm"))):
                part.unlink(missing_ok=True)
            file_marker(path).unlink(missing_ok=True)
        elif path.exists():  # not already gone with a managed folder it sat in
            shutil.rmtree(path)
    return list(places.values())
