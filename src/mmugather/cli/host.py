"""Commands that look at the host: `snapshot` captures a live process's address space, `kernel-check`
holds the model against the host kernel, `calibrate` measures the host's costs."""
from __future__ import annotations

import click

from mmugather.cli.group import main


@main.command()
@click.option("--pid", type=int, required=True, help="The process to capture.")
@click.option("-o", "--out", "out_dir", required=True, help="Directory to write maps, smaps, meta.json, present.")
@click.option("--force", is_flag=True, help="Write into a directory that already holds files.")
def snapshot(pid, out_dir, force) -> None:
    """Capture /proc/PID/{maps,smaps} (and pagemap present bits, where readable) into a snapshot directory
    (new or empty, unless --force)."""
    from mmugather.cli.paths import check_output_dir
    from mmugather.workloads.snapshot import capture
    check_output_dir("-o", out_dir, empty=True, force=force)
    snap = capture(pid, out_dir)
    click.echo(f"{out_dir}: {len(snap.vmas)} VMAs, {snap.rss_pages} resident pages, {snap.threads} threads"
               + ("" if snap.has_present else " (no pagemap: resident pages will be placed from each VMA start)"))


@main.command("kernel-check")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--repeat", "repeats", type=click.IntRange(1, 101), default=5, show_default=True,
              help="Host repeats per script (the median is compared).")
@click.option("--quick", is_flag=True, help="Only the quick subset of the catalogue (what CI runs).")
@click.option("--only", "names", multiple=True, help="Run only this check (OP:N:B); repeatable.")
@click.option("--costs", "costs_file", default=None, help="Cost file for the model's syscall times (see calibrate).")
@click.option("--list", "list_only", is_flag=True, help="List the catalogue and exit.")
@click.option("--trace", "traced", is_flag=True,
              help="Also record the tlb:tlb_flush tracepoint of each call (tracefs, root): the kernel's remote "
                   "flush decisions, and per CPU the shootdowns it handled, those that found it off the mm, "
                   "and (sched:sched_switch) the runs of user tasks from outside the probe.")
@click.option("--arch", "arch", default="auto", show_default=True,
              help="Model arch to compare with: auto picks x86-kvm on a KVM guest whose kernel uses PV TLB flush "
                   "(kernel log or CPUID), else x86.")
def kernel_check(as_json, repeats, quick, names, costs_file, list_only, traced, arch) -> None:
    """Run the catalogue of syscall scripts on the host kernel and in the model; exit 1 on a mismatch."""
    import json
    import sys

    from mmugather.errors import InputError
    from mmugather.host import kernel_check as kc
    from mmugather.machine.costs import load_costs
    try:
        checks = kc.select(quick, list(names))
    except ValueError as e:
        raise InputError(f"--only: {e}") from None
    if list_only:
        for c in checks:
            click.echo(f"{c.name}{'  (quick)' if c.quick else ''}")
        return
    costs = load_costs(costs_file)
    model_arch = _kernel_check_arch(arch)
    trace_root = None
    if traced:
        from mmugather.host.ftrace import find_tracefs
        trace_root, why = find_tracefs()
        if trace_root is None:
            raise InputError(f"--trace: the tlb:tlb_flush tracepoint is not usable here: {why}")
    if not as_json:
        h = kc.host_info()
        click.echo(f"host: Linux {h['kernel']} {h['machine']}, CPUs {h['cpus']}, THP {h['thp']}; model: policy "
                   f"{kc.MODEL_POLICY}, arch {model_arch[0]} ({model_arch[1]}); {repeats} repeats, per-CPU medians")
        click.echo(kc.HEADER + (kc.TRACE_HEADER if traced else ""))
    result = kc.run_check(checks, repeats, costs, None if as_json else lambda r: click.echo(kc.format_row(r, traced)),
                          trace_root, model_arch)
    rows = result["scripts"]
    if as_json:
        click.echo(json.dumps(result))
    elif result["skipped"]:
        click.echo(f"skipped: {result['reason']} ({len(rows)} scripts)")
    else:
        bad = sum(1 for r in rows if r["match"] is False)
        click.echo(f"{len(rows) - bad}/{len(rows)} match" + (f"; model: {result['model']['unavailable']}"
                                                             if result["model"]["unavailable"] else ""))
    if any(r["match"] is False for r in rows):
        sys.exit(1)


def _kernel_check_arch(arch: str) -> tuple[str, str]:
    """(model arch, why) for kernel-check --arch: detected for "auto", else a 6.18 arch named by hand."""
    from mmugather.arch import ARCHES
    from mmugather.errors import InputError
    from mmugather.host.hypervisor import detect_arch
    from mmugather.host.kernel_check import MODEL_POLICY
    if arch == "auto":
        return detect_arch()
    if arch not in ARCHES[MODEL_POLICY]:
        raise InputError(f"--arch: unknown arch '{arch}' for kernel-check (expected auto or one of: "
                         f"{', '.join(ARCHES[MODEL_POLICY])})")
    return arch, "--arch"


@main.command()
@click.option("-o", "--out", "out_file", required=True, help="Cost file to write (.json for JSON, else TOML).")
@click.option("--runs", type=click.IntRange(1, 51), default=5, show_default=True,
              help="Repeats of the fault probes: 2 x RUNS + 1 (at least 11; the 1-page probes take 201 "
                   "samples, the kernel-check scripts 5 to 15).")
@click.option("--no-fit", is_flag=True, help="Set the costs from the measurements alone, without fitting the model.")
@click.option("--max-spread", type=click.FloatRange(0.0, min_open=True), default=0.25, show_default=True,
              help="Refuse (exit 2, no file) when a figure's interquartile spread, (p75 - p25) / median, "
                   "exceeds this (a busy host); warn above half of it. Figures bimodal by nature (the idle "
                   "CPU's wake-up) are only warned about.")
def calibrate(out_file, runs, no_fit, max_spread) -> None:
    """Measure each cost the model charges with its own host probe (null syscall, faults, per-page munmap,
    1-page mmap/munmap/madvise/mprotect, shootdown round trips to a running and an idle CPU, the target's
    own cost, and mutual shootdowns as a check: small C programs, built with cc); fit each
    cost so the 6.18 model's version of its probe takes the host's time; write a --costs file with the
    sources and the host's spread. Takes about 20 s."""
    from pathlib import Path

    from mmugather.errors import InputError
    from dataclasses import replace

    from mmugather.host import calibrate as cal
    from mmugather.host.kernel_check import host_info, model_unavailable
    from mmugather.machine.costs import Costs
    from mmugather.host.probe import host_supported
    from mmugather.host.worker import WorkerError
    from mmugather.cli.paths import check_output_file
    check_output_file("-o", out_file)
    why = host_supported()
    if why:
        raise InputError(f"calibrate: this host cannot run the probes: {why}")
    try:
        figures = cal.calibrate(runs=runs)
    except WorkerError as e:
        raise InputError(f"calibrate: {e}") from None
    _calibrate_figures(figures, max_spread)
    why_no_model = "--no-fit" if no_fit else model_unavailable()
    costs, sources = cal.fit_costs(figures, with_model=not why_no_model)
    h = host_info()
    how = (f"not fitted to the model ({why_no_model})" if why_no_model
           else "each cost fitted so the 6.18 model's version of its own probe takes the host's median")
    note = (f"mmugather calibrate on Linux {h['kernel']} {h['machine']}, {len(h['cpus'])} CPUs, {runs} runs; {how}.\n"
            f"Use with: mmugather compare --costs {Path(out_file).name} ...")
    try:
        Path(out_file).write_text(cal.cost_file_text(figures, costs, sources,
                                                     "json" if out_file.endswith(".json") else "toml", note))
    except OSError as e:
        raise InputError(f"{out_file}: cannot write: {e.strerror}") from None
    click.echo(f"{out_file}: ({how})")
    for k, v in costs.items():
        click.echo(f"  {k} = {v}   # {sources[k]}")
    if "shootdown_round_trip_ns" not in figures:
        click.echo("note: no C compiler (cc): the shootdown probe did not run, so ipi_send, ipi_delivery, "
                   "ipi_handler and ipi_ack keep their defaults; the short calls and faults were timed from "
                   "Python, each 0.5-1.5 us slower than in C", err=True)
    if not why_no_model:
        _calibrate_checks(cal.checks(figures, replace(Costs(), **costs)))


def _calibrate_figures(figures: dict, max_spread: float) -> None:
    """Print what calibrate measured, then refuse (InputError) when a figure's interquartile spread exceeds
    max_spread; warn above half of it; note the figures bimodal by nature."""
    from mmugather.errors import InputError
    from mmugather.host import calibrate as cal
    click.echo(f"{'measured on this host':34s} {'median':>10s} {'p10':>10s} {'p90':>10s} {'p10-90':>7s} "
               f"{'IQR':>5s}  unit")
    for k, f in figures.items():
        iqr = f"{f.iqr_spread:5.0%}" if f.p25 is not None else f"{'-':>5s}"
        click.echo(f"{k:34s} {f.median:10,.1f} {f.p10:10,.1f} {f.p90:10,.1f} {f.spread:7.0%} {iqr}  {f.unit}")
    too_noisy = cal.noisy(figures, max_spread)
    if too_noisy:
        worst = ", ".join(f"{k} {s:.0%}" for k, s in too_noisy)
        raise InputError(f"calibrate: the host is too busy to fit (interquartile spread above {max_spread:.0%}: "
                         f"{worst}); rerun on a quiet machine, or raise --max-spread")
    for k, s in cal.noisy(figures, max_spread / 2):
        click.echo(f"warning: {k} varies by {s:.0%} of its median (interquartile) on this host: the fit "
                   "inherits that noise", err=True)
    for k, why in cal.BIMODAL.items():
        if k in figures:
            click.echo(f"note: {k} spreads {figures[k].spread:.0%} (p10-p90), {figures[k].iqr_spread:.0%} "
                       f"(IQR), not judged: {why}; its median is fitted", err=True)


def _calibrate_checks(rows) -> None:
    """Print the figures the model is checked against, not fitted to: host median and range, model, ratio."""
    for k, f, model, how in rows:
        click.echo(f"check (not fitted): {k} host {f.median:,.0f} ns (p10 {f.p10:,.0f}, p90 {f.p90:,.0f}), "
                   f"model {model:,.0f} ns, model/host {model / f.median:.2f} ({how})")
