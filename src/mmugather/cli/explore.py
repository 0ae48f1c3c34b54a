"""`mmugather explore`, `mmugather replay` and `mmugather bugs`: the race explorer on the command line."""
from __future__ import annotations

import json
import sys

import click

from mmugather.arch import arch_names
from mmugather.cli.group import main
from mmugather.cli.limits import memory_option
from mmugather.errors import InputError


class _Bar:
    """A rich progress line on stderr (states, transitions per second, depth), drawn only on a terminal."""

    def __init__(self, label: str) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text
        self._text = Text
        self.live = Live(Text(label), console=Console(stderr=True), transient=True, refresh_per_second=8)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)

    def update(self, r, depth: int) -> None:
        rate = r.transitions / r.seconds if r.seconds else 0
        self.live.update(self._text(
            f"{r.strategy}: {r.executions:,} executions, {r.states:,} states, {r.transitions:,} transitions "
            f"({rate:,.0f}/s), depth {depth} (longest {r.max_depth_seen}), {r.pruned:,} pruned, "
            f"{r.seconds:.1f} s"))


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def _bar(label: str, quiet: bool):
    return _Bar(label) if sys.stderr.isatty() and not quiet else _NoBar()


@main.command()
@click.argument("scenario")
@click.option("--policy", default=None, help="Built-in policy, MODULE:CLASS or FILE.py:CLASS "
                                             "(default: the scenario's machine.policy).")
@click.option("--strategy", type=click.Choice(("exhaustive", "pct", "random")), default="exhaustive",
              show_default=True, help="Systematic (context-bounded) search, PCT, or uniform random schedules.")
@click.option("--max-preemptions", type=int, default=2, show_default=True,
              help="exhaustive: the preemption bound (CHESS context bounding).")
@click.option("--budget", type=int, default=None,
              help="Executions at most (default: 200000 exhaustive, 2000 pct/random).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="pct/random: the seed of the schedules (>= 0).")
@click.option("--depth", "pct_depth", type=int, default=3, show_default=True, help="pct: the bug depth d.")
@click.option("--max-steps", type=int, default=10_000, show_default=True,
              help="Steps per execution at most (the depth bound).")
@click.option("--without-fix", "without_fixes", multiple=True, help="Switch off a named fix (see `policies`).")
@click.option("--arch", default=None, help=f"One of {', '.join(arch_names())} (default: the policy's first).")
@click.option("--no-shrink", is_flag=True, help="Keep the schedule as found.")
@click.option("--no-por", is_flag=True, help="exhaustive: no partial-order reduction (sleep sets), to compare.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--out", "out_file", default=None, help="Save a found violation as a JSON replay file here.")
@memory_option
def explore(scenario, policy, strategy, max_preemptions, budget, seed, pct_depth, max_steps, without_fixes, arch,
            no_shrink, no_por, as_json, out_file, max_memory) -> None:
    """Search the interleavings of a small SCENARIO (file or built-in workload) for an invariant violation.

    Exit status: 0 no violation within the bound (the bound covered is printed), 1 a violation was found,
    2 bad input."""
    from mmugather import api
    from mmugather.cli.limits import check_memory
    from mmugather.cli.paths import check_output_file
    from mmugather.policies import get_policy
    from mmugather.policies.plugins import plugin_guard
    from mmugather.workloads.builtin import resolve_workload
    check_output_file("--out", out_file)
    sc = resolve_workload(scenario)
    check_memory(sc, max_memory, f"scenario '{sc.name}'")
    spec = policy or sc.machine.policy
    with _bar(f"exploring {sc.name}", as_json) as bar, plugin_guard(get_policy(spec)):
        result = api.explore(sc, spec, strategy=strategy, max_preemptions=max_preemptions,
                             budget=budget, seed=seed, depth=pct_depth, max_steps=max_steps,
                             without_fixes=without_fixes, arch=arch, shrink=not no_shrink, por=not no_por,
                             out=out_file,
                             progress=bar)
    found = result.violation is not None
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        _print_report(sc.name, result.policy, without_fixes, result.report, result.coverage, out_file,
                      result.actors)
    sys.exit(1 if found else 0)


def _print_report(name, policy, without, report, coverage, out_file, names: dict[int, str]) -> None:
    head = f"explore {name} under {policy}" + (f" without {', '.join(without)}" if without else "")
    click.echo(f"{head}: {report['strategy']}")
    v = report["violation"]
    if v is None:
        click.echo(f"no violation: {coverage} ({report['seconds']} s)")
        return
    click.echo(f"VIOLATION {v['kind']} on CPU {v['cpu']}: {v['detail']}")
    found, kept = report["found_schedule_length"], len(report["schedule"])
    click.echo(f"found after {report['executions']:,} executions ({report['transitions']:,} transitions) in "
               f"{report['seconds']} s; schedule: {found} deviation{'' if found == 1 else 's'} from the default "
               f"order, shrunk to {kept}")
    for step, actor in report["schedule"]:
        click.echo(f"  at step {step}: {names.get(actor, actor)}")
    click.echo("story (steps with no event left out; (+) after the violation):")
    for line in report["story"]:
        click.echo(line)
    if out_file:
        click.echo(f"replay file: {out_file} (mmugather replay {out_file})")


@main.command()
@click.argument("replay_file")
@click.option("--trace", "trace_file", default=None, help="Also write a Chrome/Perfetto JSON timeline of the replay.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@memory_option
def replay(replay_file, trace_file, as_json, max_memory) -> None:
    """Re-run a schedule saved by `explore --out` and tell its story again.

    Exit status: 1 when the replay shows a violation, 0 when it does not, 2 bad input."""
    from mmugather.cli.paths import check_output_file
    from mmugather.explore.session import load_replay
    from mmugather.explore.story import tell
    from mmugather.cli.limits import parse_memory
    check_output_file("--trace", trace_file)
    target, doc = load_replay(replay_file, parse_memory(max_memory))
    traces = []
    if trace_file:
        from mmugather.sim.tracing import attach_trace, check_trace_path
        check_trace_path(trace_file)
    told = tell(target, doc["schedule"], trace=(lambda m: traces.append(attach_trace(m))) if trace_file else None)
    if trace_file:
        from mmugather.sim.tracing import save_traces
        save_traces(traces, trace_file)
    same = doc.get("story") == told["lines"]
    v = told["violation"]
    if as_json:
        click.echo(json.dumps({"violation": v, "story": told["lines"], "same_story": same,
                               "stale_use": told["stale_use"], "trace_file": trace_file}))
    else:
        click.echo("\n".join(told["lines"]))
        click.echo(f"violation: {v['kind'] + ' on CPU ' + str(v['cpu']) if v else 'none'}; story "
                   f"{'identical to' if same else 'DIFFERENT from'} the one recorded in {replay_file}")
    sys.exit(1 if v else 0)


@main.group()
def bugs() -> None:
    """The catalogue of real mmu_gather bugs the explorer reproduces."""


@bugs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bugs_list(as_json) -> None:
    """List the catalogued bugs runnable with this build's policies."""
    from mmugather.explore.bugs import available, describe
    items = [describe(b) for b in available()]
    if as_json:
        click.echo(json.dumps(items))
        return
    for b in items:
        off = ", ".join(b["buggy_without_fixes"]) or "none"
        fixed = ", ".join(b["fixed_without_fixes"]) or "none"
        click.echo(f"{b['name']:28s} {b['year']}  {' '.join(b['commits'])}  {b['title']}")
        click.echo(f"{'':28s} fixed in {b['fixed_in']}; introduced by {b['introduced']}")
        click.echo(f"{'':28s} policy {b['policy']}: buggy without [{off}], fixed without [{fixed}]; "
                   f"expects {b['expect']}")


@bugs.command("run")
@click.argument("name")
@click.option("--max-preemptions", type=int, default=None, help="Override the entry's preemption bound.")
@click.option("--budget", type=int, default=None, help="Override the entry's execution budget.")
@click.option("--no-por", is_flag=True, help="No partial-order reduction (sleep sets), to compare.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bugs_run(name, max_preemptions, budget, no_por, as_json) -> None:
    """Explore the buggy and the fixed variant of bug NAME. Exit status 0 only when the buggy one fails with
    the expected violation and the fixed one passes within the bound."""
    from mmugather.explore.bugs import get_bug, run_bug
    bug = get_bug(name)
    if max_preemptions is not None and max_preemptions < 0:
        raise InputError(f"--max-preemptions: expected a number >= 0, got {max_preemptions}")
    if budget is not None and budget < 1:
        raise InputError(f"--budget: expected a number >= 1, got {budget}")
    with _bar(f"bug {name}", as_json) as bar:
        out = run_bug(bug, max_preemptions=max_preemptions, budget=budget, por=not no_por, progress=bar)
    if as_json:
        click.echo(json.dumps(out))
    else:
        for key in ("buggy", "fixed"):
            part = out[key]
            v = part["violation"]
            off = ", ".join(part["without_fixes"]) or "no fix switched off"
            verdict = f"VIOLATION {v['kind']}: {v['detail']}" if v else "no violation"
            click.echo(f"{key:5s} ({bug.policy}, {off}): {verdict}; {part['executions']:,} executions, "
                       f"{part['transitions']:,} transitions, {part['seconds']} s")
        b = out["fixed"]["bound"]
        click.echo(f"bound: every schedule with at most {b['max_preemptions']} preemptions"
                   f"{'' if b['covered'] else ' NOT covered (budget ran out)'}; "
                   f"{'OK' if out['ok'] else 'FAILED'}: expected {bug.expect} in the buggy variant only")
    sys.exit(0 if out["ok"] else 1)
