"""calibrate: host measurements become a cost file that --costs reads and that makes the model's munmap
workloads take the host's times."""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from mmugather.host import calibrate as cal
from mmugather.host.kernel_check import model_predict_ns, model_unavailable
from mmugather.host.probe import host_supported
from mmugather.machine.costs import Costs, load_costs

ROOT = Path(__file__).resolve().parents[1]
MEASURED = {"munmap_ns_per_page": 300.0, "munmap_1page_alone_ns": 4000.0, "munmap_1page_running_ns": 14000.0,
            "shootdown_round_trip_ns": 10000.0}


def test_without_a_model_the_measurements_are_split_in_the_defaults_proportions():
    c = cal.fit_costs(MEASURED)
    assert c["pte_zap"] + c["page_free"] == 300
    assert sum(c[f] for f in cal.ROUND_TRIP_FIELDS) == 10000
    d = Costs()
    assert abs(c["ipi_send"] / c["ipi_ack"] - d.ipi_send / d.ipi_ack) < 0.01


@pytest.mark.skipif(model_unavailable() != "", reason=f"model: {model_unavailable()}")
def test_fitted_costs_make_the_model_take_the_measured_times():
    """With the model in the loop, a 1-page munmap alone, the extra of one running thread and the
    per-page slope come out as measured (to rounding)."""
    c = replace(Costs(), **cal.fit_costs(MEASURED, model_predict_ns))
    alone = model_predict_ns("munmap:1:alone", c)
    assert abs(alone - 4000) <= 2
    assert abs(model_predict_ns("munmap:1:running", c) - alone - 10000) <= 100
    slope = (model_predict_ns("munmap:65536:alone", c) - alone) / 65535
    assert abs(slope - 300) <= 3


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_cost_file_round_trips_through_load_costs(tmp_path, suffix):
    costs = cal.fit_costs(MEASURED)
    path = tmp_path / f"host{suffix}"
    path.write_text(cal.cost_file_text(MEASURED, costs, suffix[1:], "a note\nover two lines"))
    loaded = load_costs(path)
    assert all(getattr(loaded, k) == v for k, v in costs.items())
    if suffix == ".json":
        assert json.loads(path.read_text())["measured"] == MEASURED


@pytest.mark.host
@pytest.mark.skipif(host_supported() != "", reason=f"host cannot run the probes: {host_supported()}")
def test_live_calibration_writes_a_usable_cost_file(tmp_path):
    """On this host: positive per-page cost, a round trip, and a file compare accepts."""
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mmugather", *args], capture_output=True, text=True, cwd=ROOT)
    out = tmp_path / "host.toml"
    r = cli("calibrate", "-o", str(out), "--runs", "3")
    assert r.returncode == 0, r.stderr
    c = load_costs(out)
    assert c.pte_zap + c.page_free > 0 and c.ipi_send > 0
    r = cli("compare", "--workload", "munmap-1g", "--policies", "3.0", "--costs", str(out), "--json")
    assert r.returncode == 0, r.stderr
