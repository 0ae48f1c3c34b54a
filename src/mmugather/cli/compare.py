"""`mmugather compare`, `run`, `workloads` and `policies`: simulate a workload and list what there is to run."""
from __future__ import annotations

import json
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import click

from mmugather.arch import arch_names
from mmugather.cli.group import main
from mmugather.cli.limits import check_memory, memory_option, run_bounds_options, runs_in_memory
from mmugather.cli.paths import check_output_file
from mmugather.errors import InputError
from mmugather.machine.costs import load_costs
from mmugather.policies import POLICIES, get_policy
from mmugather.machine.engine import PREEMPT_MODELS
from mmugather.workloads.builtin import builtin_workloads, resolve_workload
from mmugather.workloads.scenario import parse_scenario

if TYPE_CHECKING:
    from mmugather.parallel import Progress


def _policies(value: str) -> list:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise InputError("--policies: expected a comma-separated list of policies")
    return [get_policy(n) for n in names]


def _policy_arches(classes: list, arch: str | None) -> list[tuple]:
    """(policy class, arch or None for its first) for each run of `compare` (api.policy_arches), after
    checking that every arch named in `--arch A,B,...` is one the registry knows."""
    from mmugather import api
    arches = api.arch_list(arch)
    if arches is not None:
        _check_arches(arches)
    return api.policy_arches(classes, arch)


def _check_arches(arches: list[str]) -> None:
    """Every arch named must be one of the registry's (a typo is an error, not a silently skipped run)."""
    unknown = [a for a in arches if a not in arch_names()]
    if unknown:
        raise InputError(f"--arch: unknown arch '{unknown[0]}' (expected one of: {', '.join(arch_names())})")


def _check_prob(p: float | None) -> None:
    if p is not None and not 0.0 <= p <= 1.0:
        raise InputError(f"--fail-nowait: expected a probability in [0, 1], got {p}")


def workload_or_snapshot(workload: str | None, snapshot: str | None, variant: str, cpus: int | None,
                         workload_option: str = "--workload"):
    """The scenario named by --workload (or `workload_option`, as `run` names its argument), or built from
    --snapshot (a directory or a shipped name)."""
    if snapshot is None:
        return resolve_workload(workload)
    if workload is not None:
        raise InputError(f"{workload_option} and --snapshot: give one or the other")
    from mmugather.workloads.snapshot import resolve_snapshot, snapshot_to_scenario
    snap = resolve_snapshot(snapshot)
    return parse_scenario(snapshot_to_scenario(snap, variant, cpus), f"snapshot {snapshot}")


def _progress(nruns: int, as_json: bool) -> AbstractContextManager[Progress | None]:
    """compare's progress bar on stderr (cli/progress.py); with --json none (nor Rich's import before the runs)."""
    if as_json:
        return nullcontext()
    from mmugather.cli.progress import CompareProgress, progress_wanted
    return CompareProgress(nruns, sys.stderr, enabled=progress_wanted(sys.stderr, as_json))


SNAPSHOT_VARIANTS = ("exit", "munmap-largest")


@main.command()
@click.option("--workload", "workload", default=None,
              help="Built-in workload name (`mmugather workloads`), OP:N[:B], wis:..., snapshot:NAME, or a scenario "
                   "TOML file (default: default).")
@click.option("--policies", default="2.6.39,3.0,6.18", show_default=True, help="Comma-separated policies.")
@click.option("--cpus", type=int, default=None,
              help="Number of CPUs (default: the workload's). Works with every workload: a thread pinned to CPU c "
                   "runs on CPU c mod N, where the simulated scheduler time-shares the threads of one CPU.")
@click.option("--preempt", type=click.Choice(PREEMPT_MODELS), default=None,
              help="Preemption model: CONFIG_PREEMPT_NONE, _VOLUNTARY or CONFIG_PREEMPT (default: the workload's "
                   "machine.preempt).")
@click.option("--fail-nowait", type=float, default=None, metavar="P",
              help="Probability 0..1 that a GFP_NOWAIT (gather batch) allocation fails (default: the workload's "
                   "machine.fail_nowait).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Random seed >= 0 (default: the workload's).")
@click.option("--costs", "costs_file", default=None,
              help="Cost file (TOML or JSON, ns per operation, e.g. from `calibrate`) overriding the built-in "
                   "reference costs (machine/costs.py).")
@click.option("--arch", default=None,
              help=f"Comma-separated arches ({', '.join(arch_names())}): each policy runs on each listed arch "
                   "it supports (default: the first arch each policy supports).")
@click.option("--snapshot", default=None, help="Snapshot directory or shipped snapshot name, instead of --workload.")
@click.option("--variant", type=click.Choice(SNAPSHOT_VARIANTS), default="exit", show_default=True,
              help="With --snapshot: exit_mmap of it all, or munmap of the largest VMA first.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--html", "html_file", default=None, help="Also write a self-contained HTML report here.")
@click.option("--trace", "trace_file", default=None,
              help="Also write a Chrome/Perfetto JSON timeline here (open in ui.perfetto.dev): one file, one "
                   "process per policy on the same time axis, each with a track per CPU.")
@click.option("--jobs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Runs (policy x arch) at once, each in a worker process (default: every run, up to two per "
                   "usable core, as many as fit in --max-memory; 1: one after another in this process). The "
                   "results are the same.")
@memory_option
@run_bounds_options
def compare(workload, policies, cpus, preempt, fail_nowait, seed, costs_file, arch, snapshot, variant, as_json,
            html_file, trace_file, jobs, max_memory, max_sim_ns, max_steps) -> None:
    """Run the same workload under each policy and compare them side by side.

    The runs go on at once in worker processes, on every core (--jobs). A policy plugin that fails while
    it runs is reported (exit status 2) after the other policies' results."""
    check_output_file("--html", html_file)
    check_output_file("--trace", trace_file)
    scenario = workload_or_snapshot(workload, snapshot, variant, cpus)
    classes = _policies(policies)
    _check_prob(fail_nowait)
    check_memory(scenario, max_memory, f"workload '{scenario.name}'")
    costs = load_costs(costs_file)
    if trace_file:
        from mmugather.sim.tracing import check_trace_path
        check_trace_path(trace_file)
    nruns = len(_policy_arches(classes, arch))
    from mmugather import api
    if jobs is None:
        jobs = min(api.compare_jobs(None, nruns), runs_in_memory(scenario, max_memory))
    with _progress(nruns, as_json) as progress:
        comparison = api.compare(scenario, classes, arch=arch, cpus=cpus, preempt=preempt,
                                 fail_nowait=fail_nowait, seed=seed, costs=costs, trace=trace_file,
                                 max_sim_ns=max_sim_ns, max_steps=max_steps, progress=progress, jobs=jobs)
    result = comparison.to_dict()
    if html_file:
        comparison.write_html(html_file)
    if as_json:
        click.echo(json.dumps(result, sort_keys=False))
    else:
        from mmugather.report.table import print_compare
        print_compare(result)
    failed = comparison.failures
    if failed:
        raise failed[0] if len(failed) == 1 else InputError("; ".join(map(str, failed)))


@main.command()
@click.argument("scenario_file", required=False)
@click.option("--policy", default=None, help="Policy (default: the scenario's machine.policy).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Random seed >= 0 (default: the scenario's).")
@click.option("--costs", "costs_file", default=None,
              help="Cost file (TOML or JSON, ns per operation, e.g. from `calibrate`) overriding the built-in "
                   "reference costs (machine/costs.py).")
@click.option("--arch", default=None,
              help=f"One of {', '.join(arch_names())} (default: the first arch the policy supports).")
@click.option("--without-fix", "without_fixes", multiple=True, help="Switch off a named fix (see `policies`).")
@click.option("--snapshot", default=None, help="Snapshot directory or shipped snapshot name, instead of a file.")
@click.option("--variant", type=click.Choice(SNAPSHOT_VARIANTS), default="exit", show_default=True,
              help="With --snapshot: exit_mmap of it all, or munmap of the largest VMA first.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--trace", "trace_file", default=None,
              help="Also write a Chrome/Perfetto JSON timeline here (open in ui.perfetto.dev), a track per CPU.")
@memory_option
@run_bounds_options
def run(scenario_file, policy, seed, costs_file, arch, without_fixes, snapshot, variant, as_json, trace_file,
        max_memory, max_sim_ns, max_steps) -> None:
    """Run a scenario (a file or built-in workload name, or --snapshot) under one policy."""
    check_output_file("--trace", trace_file)
    if scenario_file is None and snapshot is None:
        raise InputError("run: give a scenario file, a built-in workload name or --snapshot")
    scenario = workload_or_snapshot(scenario_file, snapshot, variant, None, workload_option="SCENARIO_FILE")
    cls = get_policy(policy or scenario.machine.policy)
    if arch is not None:
        _check_arches([arch])
    check_memory(scenario, max_memory, scenario_file or f"snapshot {snapshot}")
    from mmugather import api
    result = api.run(scenario, cls, seed=seed, costs=load_costs(costs_file), arch=arch, without_fixes=without_fixes,
                     trace=trace_file, max_sim_ns=max_sim_ns, max_steps=max_steps)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    m = result.machine
    from mmugather.report.table import print_compare
    print_compare({"workload": result.workload, "seed": result.seed,
                   "machine": {"cpus": m.cpus, "arch": m.arch, "preempt": m.preempt, "fail_nowait": m.fail_nowait},
                   "runs": [{"policy": result.policy, "metrics": result.metrics}]})


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def workloads(as_json) -> None:
    """List the built-in workloads."""
    from mmugather.workloads.builtin import FAMILIES
    items = builtin_workloads()
    if as_json:
        click.echo(json.dumps([{"name": n, "cpus": s.machine.cpus, "description": s.description}
                               for n, s in items.items()]
                              + [{"name": n, "cpus": None, "description": d} for n, d in FAMILIES.items()]))
        return
    for name, s in items.items():
        click.echo(f"{name:12s} {s.machine.cpus:3d} CPUs  {s.description}")
    click.echo("\nParametric families:")
    for name, desc in FAMILIES.items():
        click.echo(f"  {name:24s} {desc}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def policies(as_json) -> None:
    """List the built-in policies and the kernel source each follows."""
    rows: list[dict[str, Any]] = [{"name": c.name, "version": c.version, "arches": list(c.arches), "source": c.source,
             "fixes": {n: {"commits": f[0], "what": f[1]} for n, f in c.fixes.items()}}
            for c in POLICIES.values()]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['name']:8s} {r['version']:8s} arches: {','.join(r['arches']):14s} {r['source']}")
        for n, f in r["fixes"].items():
            click.echo(f"{'':17s} fix {n}: {f['commits']}: {f['what']}")
