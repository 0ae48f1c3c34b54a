"""The `mmugather` command line: the group and entry point (cli/group.py) with every command module's
commands registered on it."""
from __future__ import annotations

from mmugather.cli import compare, explore, host, schema, sweep  # noqa: F401  (register their commands)
from mmugather.cli.group import entry, main

__all__ = ["entry", "main"]
