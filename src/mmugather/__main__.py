"""`python -m mmugather` is the `mmugather` command."""
from mmugather.cli import entry

entry()
