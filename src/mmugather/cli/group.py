"""The `mmugather` click group, which every command module of cli/ registers its commands on, and the
console entry point around it."""
from __future__ import annotations

import sys

import click

from mmugather.errors import InputError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mmugather")
def main() -> None:
    """mmugather: the Linux kernel's mmu_gather, executable on a simulated SMP machine."""


def entry() -> None:
    """Console entry point: bad input is one line on stderr and exit code 2, never a traceback."""
    try:
        main.main(standalone_mode=False)
    except InputError as e:
        click.echo(f"mmugather: error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e))
        sys.exit(2)
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "mmugather"
        click.echo(f"{cmd}: error: {e.format_message()}", err=True)
        sys.exit(2)
    except click.Abort:
        click.echo("mmugather: aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"mmugather: error: {e.format_message()}", err=True)
        sys.exit(2)
