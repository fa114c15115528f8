"""Each stage records what it cost: its wall time and the peak resident memory of the driver's
node, written when it ends and read back in pipeline order by the compare report."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from flows.tracking import costs


def test_peak_memory_sees_a_child_process_allocate():
    with costs.PeakMemory(every_s=0.05, list_every_s=0.05) as quiet:
        pass
    script = "import time, numpy as np; a = np.ones(200 * 2**20 // 8); time.sleep(1.0)"
    with costs.PeakMemory(every_s=0.05, list_every_s=0.05) as busy:
        subprocess.run([sys.executable, "-c", script], check=True)
    assert busy.peak - quiet.peak > 150 * 2**20


def test_peak_memory_lists_the_processes_at_most_every_list_every_s(monkeypatch):
    """Listing the node's processes is the dear part of a sample; between listings only the
    resident memory of those already listed is read."""
    listings = []
    listed = costs._node_processes
    monkeypatch.setattr(costs, "_node_processes", lambda: listings.append(1) or listed())
    with costs.PeakMemory(every_s=0.01, list_every_s=60) as memory:
        time.sleep(0.3)
    assert len(listings) == 2  # once as sampling starts, once at the end
    assert memory.peak > 10 * 2**20


def test_a_measured_stage_writes_its_record_and_a_failed_one_keeps_the_last(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    @costs.measured("sample")
    def stage(params, run):
        if params == "fail":
            raise RuntimeError("stage failed")
        return {"ok": run}

    assert stage("params", "ddpm-paper") == {"ok": "ddpm-paper"}
    record = json.loads((tmp_path / "costs" / "sample-ddpm-paper.json").read_text())
    assert record["stage"] == "sample" and record["run"] == "ddpm-paper"
    assert record["seconds"] >= 0 and record["peak_rss_mb"] > 10
    with pytest.raises(RuntimeError, match="stage failed"):
        stage("fail", "ddpm-paper")
    assert json.loads((tmp_path / "costs" / "sample-ddpm-paper.json").read_text()) == record


def test_records_come_back_in_pipeline_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("evaluate-b", "train-a", "prepare", "sample-a", "train-b"):
        stage, _, run = name.partition("-")
        costs.measured(stage)(lambda params, *run: None)(None, *([run] if run else []))
    (tmp_path / "costs" / "register-a.json").write_text("{half a recor")
    order = [(c["stage"], c["run"]) for c in costs.read_costs(["a", "b"])]
    assert order == [("prepare", None), ("train", "a"), ("sample", "a"), ("train", "b"), ("evaluate", "b")]
