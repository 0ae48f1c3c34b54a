"""Errors that end a command with one line on stderr and exit code 2."""


class InputError(Exception):
    """Bad input from the user (a file, a flag, a value): the message names what and what was expected."""


MAX_INPUT_BYTES = 256 << 20


def read_input(path, limit: int = MAX_INPUT_BYTES) -> str:
    """The text of an input file the user named. A device or pipe (/dev/zero, /dev/full would be read
    forever) or a file over `limit` bytes is an InputError; OSError and UnicodeDecodeError are left to the
    caller, which names the kind of file in its message."""
    import os
    import stat
    with open(path, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise InputError(f"{path}: not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{path}: larger than {limit >> 20} MiB; not an input file")
    return data.decode()


def read_text_input(path, kind: str) -> str:
    """read_input(path), with a file that cannot be read or is not text as one InputError line naming the
    `kind` of file ("cost file")."""
    try:
        return read_input(path)
    except OSError as e:
        raise InputError(f"{path}: cannot read {kind}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file") from None


def read_toml_input(path, kind: str) -> dict:
    """The table of a TOML input file of the given `kind` ("scenario"), problems as one InputError line."""
    import tomllib
    text = read_text_input(path, kind)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: malformed TOML: {e}") from None
