"""Read-only folders for fault tests. Root ignores permission bits (chmod stops nobody here), so a folder
is made read-only the way a user meets one: a tmpfs or a bind mount, mounted `ro`. Where `mount` is not
allowed (no root, no CAP_SYS_ADMIN) the test is skipped, saying so."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command: read-only folders need a tmpfs or bind mount")
    return subprocess.run(["mount", *args], capture_output=True, text=True)


def _must(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        pytest.skip(f"cannot {what} here ({result.stderr.strip() or result.returncode}): read-only folders need "
                    "root with mount rights (a tmpfs or bind mount, mounted ro)")


def remount_read_only(path: Path, bind: bool = False) -> None:
    """Make a mounted folder read-only now (a disk that goes read-only under a running job)."""
    r = _mount("-o", "remount,ro,bind" if bind else "remount,ro", str(path))
    if r.returncode != 0:
        raise OSError(f"remount ro of {path} failed: {r.stderr.strip()}")


@contextmanager
def tmpfs(path: Path, read_only: bool = True, size: str = "64m") -> Iterator[Path]:
    """An empty tmpfs at `path` (created), read-only unless asked otherwise; unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    _must(_mount("-t", "tmpfs", "-o", f"size={size}" + (",ro" if read_only else ""), "tmpfs", str(path)),
          "mount a tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def read_only_view(src: Path, path: Path) -> Iterator[Path]:
    """`src` seen read-only at `path` (a bind mount, remounted ro), e.g. a cache that already holds features."""
    path.mkdir(parents=True, exist_ok=True)
    _must(_mount("--bind", str(src), str(path)), "bind-mount a folder")
    try:
        r = _mount("-o", "remount,ro,bind", str(path))
        _must(r, "remount a bind mount read-only")
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
