"""Where the tool writes, checked before any work starts; its default cache folder; and whether a location is
a URI (`s3://...`: a sweep's storage path may be one) or a local path.

A result that cannot be written used to surface after the work that made it (a whole iteration, a
sweep), as a traceback, with the result lost. Every command therefore names the paths it will write
(`WriteTarget`) and `require_writable` refuses them up front, in one line per path. The probe creates
(and removes) a file in the nearest folder that exists, because permission bits say nothing about
root, a read-only mount or a full disk. Where a write still fails later, `rescue_dirs` are the named
fallbacks for what was already finished.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


class NotWritableError(OSError):
    """Paths the tool must write cannot be written (one problem per path, `; `-separated); `hint` says what to
    do instead, when there is more to say than "write elsewhere"."""

    def __init__(self, problems: list[str], hint: str = ""):
        super().__init__("; ".join(problems))
        self.problems = list(problems)
        self.hint = hint

    def __str__(self) -> str:
        return "; ".join(self.problems)


@dataclass(frozen=True)
class WriteTarget:
    """A path a command will write: `what` names it for the user (the option that sets it, or its role)."""

    path: Path
    what: str
    kind: Literal["file", "dir"] = "file"

    @classmethod
    def file(cls, path: str | Path, what: str) -> WriteTarget:
        return cls(Path(path).expanduser(), what, "file")

    @classmethod
    def dir(cls, path: str | Path, what: str) -> WriteTarget:
        return cls(Path(path).expanduser(), what, "dir")


CACHE_ENV = "DSL_CACHE_DIR"


def default_cache_dir() -> Path:
    """The feature and step cache (and a URI sweep's local Optuna journal): `$DSL_CACHE_DIR`, else
    `~/.cache/dsl-sweeps`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dsl-sweeps")


def is_uri(location: str) -> bool:
    """True for a URI (`s3://...`, `gs://...`, `file://...`, anything pyarrow opens), False for a local path."""
    return "://" in location


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(folder: Path) -> str | None:
    """None if a file can be created in `folder`, else why not (the OS's words)."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".dsl-write-probe-")
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return None


def check_writable(targets: Iterable[WriteTarget]) -> list[str]:
    """One line per target that cannot be written (empty when all can): the option, the path, why."""
    problems: list[str] = []
    probed: dict[Path, str | None] = {}
    for t in targets:
        path = t.path
        if t.kind == "file" and path.is_dir():
            problems.append(f"{t.what} {path}: is a folder, a file path is expected")
            continue
        if t.kind == "dir" and path.exists() and not path.is_dir():
            problems.append(f"{t.what} {path}: is a file, a folder is expected")
            continue
        folder = path if t.kind == "dir" else path.parent
        anchor = _existing_ancestor(folder)
        if not anchor.is_dir():
            problems.append(f"{t.what} {path}: {anchor} is a file, so no folder can be made there")
            continue
        if anchor not in probed:
            probed[anchor] = _probe(anchor)
        why = probed[anchor]
        if why is not None:
            where = str(folder) if anchor == folder.absolute() else f"{folder} (nearest existing folder: {anchor})"
            problems.append(f"{t.what} {path}: cannot write in {where}: {why}")
        elif t.kind == "file" and path.exists() and not os.access(path, os.W_OK):  # a file written in place
            problems.append(f"{t.what} {path}: the file is not writable (permissions)")
    return problems


def require_writable(targets: Iterable[WriteTarget]) -> None:
    """Raise `NotWritableError` naming every target that cannot be written."""
    problems = check_writable(targets)
    if problems:
        raise NotWritableError(problems)


def rescue_dirs() -> list[Path]:
    """Where finished work goes when its own place cannot be written, in order of preference."""
    return [default_cache_dir() / "rescue", Path(tempfile.gettempdir()) / "dsl-sweeps-rescue"]


def write_elsewhere(write: Callable[[Path], object], label: str) -> Path | None:
    """`write(folder)` into a new folder under the first of `rescue_dirs` that takes it: that folder, or
    None when none does. For finished work whose own place failed after the up-front check."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for base in rescue_dirs():
        folder = base / f"{label}-{stamp}-{os.getpid()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write(folder)
        except OSError:
            continue
        return folder
    return None
