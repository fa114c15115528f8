"""Each benchmark runs at its smallest size and prints its reference beside its own figure."""
import pytest

from benchmarks import network_throughput

pytest.importorskip("diffusers")


def test_network_throughput_compares_equal_sized_networks(capsys):
    [result] = network_throughput.main(["--sizes", "8", "--steps", "1", "--repeats", "1", "--batch", "8"])
    project, diffusers = result["project"], result["diffusers"]
    assert abs(project["params"] / diffusers["params"] - 1) <= 0.1
    assert result["ratio"] == pytest.approx(project["steps_per_s"] / diffusers["steps_per_s"])
    assert 0 < project["peak_fraction"] < 1 and 0 < diffusers["peak_fraction"] < 1
    assert "ratio" in capsys.readouterr().out
