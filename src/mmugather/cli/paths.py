"""Output paths, checked before any work starts: a bad --html, --trace, --out or -o is one line and exit 2
instead of a traceback after a long run."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from mmugather.errors import InputError


def check_output_file(option: str, path: str | None) -> None:
    """`option PATH` names a file this command will write: PATH is a regular file we may write, or a new
    name in an existing directory we may create files in. Nothing is left behind by the check."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{option}: cannot write {path}: it is a directory")
    if p.exists() and not stat.S_ISREG(p.stat().st_mode):
        raise InputError(f"{option}: cannot write {path}: not a regular file")
    parent = p.parent
    if not parent.is_dir():
        why = "no such directory" if not parent.exists() else "its parent is not a directory"
        raise InputError(f"{option}: cannot write {path}: {why}: {parent}")
    _try_write(option, p)


def _try_write(option: str, p: Path) -> None:
    """Open PATH for appending (creating it if new, then removing it again): the real test of
    permissions, read-only mounts and pseudo-filesystems such as /proc."""
    existed = p.exists()
    try:
        with open(p, "a"):
            pass
    except OSError as e:
        raise InputError(f"{option}: cannot write {p}: {e.strerror or e}") from None
    if not existed:
        p.unlink(missing_ok=True)


def check_output_dir(option: str, path: str, *, empty: bool = False, force: bool = False) -> Path:
    """`option DIR` names a directory this command writes into: create it (and its parents) now. With
    `empty`, a directory holding files is refused unless `force`."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise InputError(f"{option}: {path} exists and is not a directory")
    if empty and not force and d.is_dir() and any(d.iterdir()):
        raise InputError(f"{option}: {path} is not empty (pass --force to overwrite its files)")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{option}: cannot create {path}: {e.strerror or e}") from None
    if not os.access(d, os.W_OK | os.X_OK):
        raise InputError(f"{option}: cannot write into {path}: permission denied")
    probe = d / f".mmugather-write-check-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise InputError(f"{option}: cannot write into {path}: {e.strerror or e}") from None
    return d
