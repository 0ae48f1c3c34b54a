"""HTML reports: one offline file with the table and one inline SVG per plot; a browser renders it."""
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from mmugather.errors import InputError
from mmugather.policies import POLICIES
from mmugather.report.html import DISTRIBUTIONS, SWEEP_METRICS, raw_distributions, write_html, write_sweep_html
from mmugather.sim.simulation import Simulation
from mmugather.sweep import Point, run_point
from mmugather.workloads.builtin import resolve_workload

EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", re.IGNORECASE)


@pytest.fixture(scope="module")
def small_compare():
    """What `mmugather compare --workload small --json` prints, and the raw distributions of its runs."""
    scenario = resolve_workload("small")
    runs, dists = [], {}
    for name in ("2.6.39", "3.0"):
        sim = Simulation(scenario, POLICIES[name])
        runs.append({"policy": name, "metrics": sim.run()})
        dists[name] = raw_distributions(sim.metrics)
    result = {"workload": "small", "machine": {"cpus": 4, "arch": "x86", "preempt": "voluntary", "fail_nowait": 0.0},
              "seed": 1, "runs": runs}
    return result, dists


def assert_self_contained(text: str) -> None:
    """Nothing is fetched (no external src/href, no scripts or images) and every inline SVG is well formed."""
    assert not EXTERNAL.search(text)
    assert not re.search(r"<(script|link|img|iframe)\b", text, re.IGNORECASE)
    for svg in re.findall(r"<svg\b.*?</svg>", text, re.DOTALL):
        assert ET.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg"


def test_compare_report_is_one_offline_file_with_the_table_and_every_plot(tmp_path, small_compare):
    result, dists = small_compare
    path = tmp_path / "small.html"
    write_html(result, path, dists)
    text = path.read_text()
    assert_self_contained(text)
    assert text.count("<svg") == 2 + len(DISTRIBUTIONS)          # flushes and IPIs bars, four CDFs
    assert text.count("<table") == 1 and "<th>shootdown IPIs sent</th>" in text
    flushes = [f"{r['metrics']['tlb_flushes']:,}" for r in result["runs"]]
    assert f'<th>TLB flushes</th><td class="n">{flushes[0]}</td><td class="n">{flushes[1]}</td>' in text
    for title in ("CDF of PTE-lock hold time", "CDF of scheduling latency", "hold time (ns), log scale"):
        assert title in text                                        # matplotlib writes titles as SVG comments
    write_html(result, tmp_path / "again.html", dists)
    assert (tmp_path / "again.html").read_text() == text           # same input, same bytes


def test_without_distributions_only_the_bars_are_drawn(tmp_path, small_compare):
    result, dists = small_compare
    write_html(result, tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    assert text.count("<svg") == 2 and "No raw distributions" in text
    with pytest.raises(ValueError, match="distributions are for"):
        write_html(result, tmp_path / "r.html", {"3.0": dists["3.0"]})


def test_sweep_report_plots_each_metric_against_each_varying_numeric_parameter(tmp_path):
    rows = [run_point(Point(0, "x86", "small", policy, "voluntary", cpus, 0.0, seed))
            for policy in ("2.6.39", "3.0") for cpus in (4, 6) for seed in (1, 2)]
    write_sweep_html(rows, tmp_path / "sweep.html")
    text = (tmp_path / "sweep.html").read_text()
    assert_self_contained(text)
    assert text.count("<svg") == len(SWEEP_METRICS)                # against CPUs only: fail_nowait is fixed
    assert "shootdown IPIs sent (count) vs CPUs" in text and '<th>cpus</th><td class="n">4, 6</td>' in text
    with pytest.raises(InputError, match="no results"):
        write_sweep_html([], tmp_path / "empty.html")


def test_chromium_renders_the_report(tmp_path, small_compare):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine")
    result, dists = small_compare
    path = tmp_path / "small.html"
    write_html(result, path, dists)
    r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", path.as_uri()],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("<svg") == 2 + len(DISTRIBUTIONS) and "shootdown IPIs sent" in r.stdout
