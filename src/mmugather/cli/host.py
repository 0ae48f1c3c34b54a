"""Commands that look at the host: `snapshot` captures a live process's address space."""
from __future__ import annotations

import click

from mmugather.cli import main


@main.command()
@click.option("--pid", type=int, required=True, help="The process to capture.")
@click.option("-o", "--out", "out_dir", required=True, help="Directory to write maps, smaps, meta.json, present.")
def snapshot(pid, out_dir) -> None:
    """Capture /proc/PID/{maps,smaps} (and pagemap present bits, where readable) into a snapshot directory."""
    from mmugather.workloads.snapshot import capture
    snap = capture(pid, out_dir)
    click.echo(f"{out_dir}: {len(snap.vmas)} VMAs, {snap.rss_pages} resident pages, {snap.threads} threads"
               + ("" if snap.has_present else " (no pagemap: resident pages will be placed from each VMA start)"))
