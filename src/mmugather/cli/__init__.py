"""The `mmugather` command line."""
from __future__ import annotations

import json
import sys

import click

from mmugather.errors import InputError
from mmugather.machine.costs import load_costs
from mmugather.policies import POLICIES, get_policy
from mmugather.report.table import run_labels
from mmugather.machine.engine import PREEMPT_MODELS
from mmugather.sim.simulation import Simulation
from mmugather.workloads.builtin import builtin_workloads, resolve_workload
from mmugather.workloads.scenario import MAX_CPUS, parse_scenario
from mmugather.workloads.wis import ops_per_s


def _policies(value: str) -> list:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise InputError("--policies: expected a comma-separated list of policies")
    return [get_policy(n) for n in names]


def _policy_arches(classes: list, arch: str | None) -> list[tuple]:
    """(policy class, arch or None for its first) for each run of `compare`: with `--arch A,B,...`, each
    policy on each listed arch it supports (arm64 did not exist before Linux 3.7, so 2.6.39 runs on x86 only)."""
    if arch is None:
        return [(cls, None) for cls in classes]
    arches = list(dict.fromkeys(a.strip() for a in arch.split(",") if a.strip()))
    if not arches:
        raise InputError("--arch: expected a comma-separated list of arches")
    pairs = []
    for cls in classes:
        mine = [a for a in arches if a in cls.arches]
        if not mine:
            raise InputError(f"--arch: policy {cls.name} does not run on {', '.join(arches)} "
                             f"(it runs on: {', '.join(cls.arches)})")
        pairs += [(cls, a) for a in mine]
    return pairs


def _check_cpus(scenario, cpus: int | None) -> None:
    if cpus is None:
        return
    if not 1 <= cpus <= MAX_CPUS:
        raise InputError(f"--cpus: expected 1..{MAX_CPUS}, got {cpus}")
    for p in scenario.process:
        for k, t in enumerate(p.thread):
            if t.cpu >= cpus:
                raise InputError(f"--cpus {cpus}: process '{p.name}' thread[{k}] runs on CPU {t.cpu}")


def _check_prob(p: float | None) -> None:
    if p is not None and not 0.0 <= p <= 1.0:
        raise InputError(f"--fail-nowait: expected a probability in [0, 1], got {p}")


def run_one(scenario, policy_cls, **kw) -> dict:
    return Simulation(scenario, policy_cls, **kw).run()


def workload_or_snapshot(workload: str | None, snapshot: str | None, variant: str, cpus: int | None):
    """The scenario named by --workload, or built from --snapshot (a directory or a shipped name)."""
    if snapshot is None:
        return resolve_workload(workload)
    if workload is not None:
        raise InputError("--workload and --snapshot: give one or the other")
    from mmugather.workloads.snapshot import resolve_snapshot, snapshot_to_scenario
    snap = resolve_snapshot(snapshot)
    return parse_scenario(snapshot_to_scenario(snap, variant, cpus), f"snapshot {snapshot}")


SNAPSHOT_VARIANTS = ("exit", "munmap-largest")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mmugather")
def main() -> None:
    """mmugather: the Linux kernel's mmu_gather, executable on a simulated SMP machine."""


@main.command()
@click.option("--workload", "workload", default=None, help="Built-in workload name or scenario TOML file.")
@click.option("--policies", default="2.6.39,3.0", show_default=True, help="Comma-separated policies.")
@click.option("--cpus", type=int, default=None, help="Number of CPUs (default: the workload's).")
@click.option("--preempt", type=click.Choice(PREEMPT_MODELS), default=None, help="Preemption model.")
@click.option("--fail-nowait", type=float, default=None, help="Probability that a GFP_NOWAIT allocation fails.")
@click.option("--seed", type=int, default=None, help="Random seed (default: the workload's).")
@click.option("--costs", "costs_file", default=None, help="Cost file (TOML or JSON) overriding the defaults.")
@click.option("--arch", default=None,
              help="Comma-separated arches (x86, x86-kvm, arm64, ppc64): each policy runs on each listed arch it "
                   "supports (default: the first arch each policy supports).")
@click.option("--snapshot", default=None, help="Snapshot directory or shipped snapshot name, instead of --workload.")
@click.option("--variant", type=click.Choice(SNAPSHOT_VARIANTS), default="exit", show_default=True,
              help="With --snapshot: exit_mmap of it all, or munmap of the largest VMA first.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--html", "html_file", default=None, help="Also write a self-contained HTML report here.")
@click.option("--trace", "trace_file", default=None,
              help="Also write a Chrome/Perfetto JSON timeline here (open in ui.perfetto.dev): one file, one "
                   "process per policy on the same time axis, each with a track per CPU.")
def compare(workload, policies, cpus, preempt, fail_nowait, seed, costs_file, arch, snapshot, variant, as_json,
            html_file, trace_file) -> None:
    """Run the same workload under each policy and compare them side by side."""
    scenario = workload_or_snapshot(workload, snapshot, variant, cpus)
    classes = _policies(policies)
    _check_cpus(scenario, cpus)
    _check_prob(fail_nowait)
    costs = load_costs(costs_file)
    kw = dict(cpus=cpus, preempt=preempt, fail_nowait=fail_nowait, seed=seed, costs=costs, arch=arch)
    if trace_file:
        from mmugather.sim.tracing import attach_trace, check_trace_path, save_traces
        check_trace_path(trace_file)
    pairs = _policy_arches(classes, arch)
    labels = run_labels([{"policy": cls.name, "arch": a} for cls, a in pairs])
    runs, distributions, traces = [], {}, []
    for (cls, a), label in zip(pairs, labels):
        sim = Simulation(scenario, cls, **dict(kw, arch=a))
        if trace_file:
            traces.append(attach_trace(sim, pid=len(traces) + 1,
                                       first_flow_id=traces[-1].next_flow_id if traces else 1))
        runs.append({"policy": cls.name, "arch": sim.arch_name, "metrics": sim.run()})
        rate = ops_per_s(scenario, runs[-1]["metrics"])
        if rate is not None:
            runs[-1]["ops_per_s"] = round(rate, 1)     # counted loop iterations (wis:...), all tasks together
        if html_file:
            from mmugather.report.html import raw_distributions
            distributions[label] = raw_distributions(sim.metrics)
    m = scenario.machine
    result = {
        "workload": scenario.name,
        "machine": {"cpus": cpus or m.cpus, "arch": ",".join(dict.fromkeys(r["arch"] for r in runs)),
                    "preempt": preempt or m.preempt,
                    "fail_nowait": fail_nowait if fail_nowait is not None else m.fail_nowait},
        "seed": seed if seed is not None else scenario.seed,
        "runs": runs,
    }
    if html_file:
        from mmugather.report.html import write_html
        write_html(result, html_file, distributions)
    if trace_file:
        save_traces(traces, trace_file)
    if as_json:
        click.echo(json.dumps(result, sort_keys=False))
    else:
        from mmugather.report.table import print_compare
        print_compare(result)


@main.command()
@click.argument("scenario_file", required=False)
@click.option("--policy", default=None, help="Policy (default: the scenario's machine.policy).")
@click.option("--seed", type=int, default=None, help="Random seed (default: the scenario's).")
@click.option("--costs", "costs_file", default=None, help="Cost file (TOML or JSON) overriding the defaults.")
@click.option("--arch", default=None, help="x86 or arm64 (default: the first arch the policy supports).")
@click.option("--without-fix", "without_fixes", multiple=True, help="Switch off a named fix (see `policies`).")
@click.option("--snapshot", default=None, help="Snapshot directory or shipped snapshot name, instead of a file.")
@click.option("--variant", type=click.Choice(SNAPSHOT_VARIANTS), default="exit", show_default=True,
              help="With --snapshot: exit_mmap of it all, or munmap of the largest VMA first.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--trace", "trace_file", default=None,
              help="Also write a Chrome/Perfetto JSON timeline here (open in ui.perfetto.dev), a track per CPU.")
def run(scenario_file, policy, seed, costs_file, arch, without_fixes, snapshot, variant, as_json, trace_file) -> None:
    """Run a scenario (a file or built-in workload name, or --snapshot) under one policy."""
    if scenario_file is None and snapshot is None:
        raise InputError("run: give a scenario file, a built-in workload name or --snapshot")
    scenario = workload_or_snapshot(scenario_file, snapshot, variant, None)
    cls = get_policy(policy or scenario.machine.policy)
    if trace_file:
        from mmugather.sim.tracing import attach_trace, check_trace_path, save_traces
        check_trace_path(trace_file)
        sim = Simulation(scenario, cls, seed=seed, costs=load_costs(costs_file), arch=arch, without_fixes=without_fixes)
        trace = attach_trace(sim)
        metrics = sim.run()
        save_traces([trace], trace_file)
    else:
        metrics = run_one(scenario, cls, seed=seed, costs=load_costs(costs_file), arch=arch,
                          without_fixes=without_fixes)
    result = {"workload": scenario.name, "policy": cls.name,
              "seed": seed if seed is not None else scenario.seed, "metrics": metrics}
    if as_json:
        click.echo(json.dumps(result))
        return
    m = scenario.machine
    from mmugather.report.table import print_compare
    print_compare({"workload": scenario.name, "seed": result["seed"],
                   "machine": {"cpus": m.cpus, "arch": arch or next(iter(cls.arches)), "preempt": m.preempt,
                               "fail_nowait": m.fail_nowait},
                   "runs": [{"policy": cls.name, "metrics": metrics}]})


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
    rows = [{"name": c.name, "version": c.version, "arches": list(c.arches), "source": c.source,
             "fixes": {n: {"commits": f[0], "what": f[1]} for n, f in c.fixes.items()}}
            for c in POLICIES.values()]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['name']:8s} {r['version']:8s} arches: {','.join(r['arches']):14s} {r['source']}")
        for n, f in r["fixes"].items():
            click.echo(f"{'':17s} fix {n}: {f['commits']}: {f['what']}")


from mmugather.cli import (  # noqa: E402,F401  (register their commands)
    explore as _explore, host as _host, sweep as _sweep,
)


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
