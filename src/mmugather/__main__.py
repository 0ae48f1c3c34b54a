"""`python -m mmugather ARGS` runs the command line."""
from mmugather.cli import entry

entry()
