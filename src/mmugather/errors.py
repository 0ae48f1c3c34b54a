"""Errors that end a command with one line on stderr and exit code 2."""


class InputError(Exception):
    """Bad input from the user (a file, a flag, a value): the message names what and what was expected."""
