"""`mmugather sweep`: a parameter grid run on a local process pool or a Dask cluster."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mmugather.cli.group import main
from mmugather.cli.limits import memory_option, parse_memory
from mmugather.cli.paths import check_output_file


@main.command()
@click.argument("sweep_file")
@click.option("--out", "out_dir", required=True, help="Directory for results.jsonl (streamed as points finish).")
@click.option("--executor", default="local", show_default=True,
              help="local (process pool), dask (a LocalCluster) or dask=ADDRESS (an existing scheduler).")
@click.option("--workers", type=int, default=None, help="Worker processes (default: one per core).")
@click.option("--chunk", type=int, default=None, help="Points per task (default: about four tasks per worker).")
@click.option("--resume", is_flag=True, help="Skip the points already in DIR/results.jsonl.")
@click.option("--html", "html_file", default=None, help="Write a self-contained HTML report of the results.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of a line of text.")
@memory_option
def sweep(sweep_file, out_dir, executor, workers, chunk, resume, html_file, as_json, max_memory) -> None:
    """Run every point of SWEEP_FILE's grid; see docs/sweeps.md.

    Ctrl-C stops the workers at once and keeps every finished point (exit status 130); --resume goes on."""
    from mmugather import api
    from mmugather.sweep import RESULTS, read_rows
    check_output_file("--html", html_file)
    limit = parse_memory(max_memory)
    try:
        results = api.sweep(sweep_file, out_dir, executor=executor, workers=workers, resume=resume, chunk=chunk,
                            max_memory=limit)
    except KeyboardInterrupt:
        kept = len(read_rows(Path(out_dir) / RESULTS)[0])
        click.echo(f"mmugather sweep: interrupted; {kept} finished points kept in {out_dir}/{RESULTS} "
                   f"(run again with --resume to go on)", err=True)
        sys.exit(130)
    assert results.ran is not None and results.skipped is not None, "sweep() counts what it ran and skipped"
    summary = {"points": results.ran + results.skipped, "skipped": results.skipped, "ran": results.ran}
    if html_file:
        results.write_html(html_file)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"{summary['points']} points: {summary['ran']} run, {summary['skipped']} already done; "
                   f"results in {out_dir}")
