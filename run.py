#!/usr/bin/env python3
"""Quickstart runner: `python3 run.py compare` or `python3 run.py test`.

Creates .venv beside this file on first use (and again when pyproject.toml changes), installs mmugather
into it with its test extras, then runs `mmugather ARGS...`, or pytest for `test`. Needs only Python 3.11+.
"""
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".mmugather-installed"


def ensure_venv() -> None:
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want:
        return
    if not (BIN / "python").exists():
        print("run.py: creating .venv", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("run.py: installing mmugather[test] into .venv", file=sys.stderr)
    subprocess.run([str(BIN / "python"), "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(want)


def main() -> int:
    if sys.version_info < (3, 11):
        print("run.py: mmugather needs Python 3.11 or newer", file=sys.stderr)
        return 2
    ensure_venv()
    args = sys.argv[1:]
    if args[:1] == ["test"]:
        cmd = [str(BIN / "python"), "-m", "pytest", *args[1:]]
    else:
        cmd = [str(BIN / "mmugather"), *args]
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
