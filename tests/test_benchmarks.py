"""Each benchmark runs at its smallest size and prints its reference beside its own figure."""
import numpy as np
import pytest

from benchmarks import network_throughput

pytest.importorskip("diffusers")


def test_network_throughput_compares_equal_sized_networks(capsys):
    [result] = network_throughput.main(["--sizes", "8", "--steps", "1", "--repeats", "1", "--batch", "8"])
    for layout in ("contiguous", "channels_last"):  # both networks in each memory order
        row = result[layout]
        project, diffusers = row["project"], row["diffusers"]
        assert abs(project["params"] / diffusers["params"] - 1) <= 0.1
        assert row["ratio_min"] <= row["ratio"] <= row["ratio_max"] and project["steps_per_s"] > 0
        assert 0 < project["peak_fraction"] < 1 and 0 < diffusers["peak_fraction"] < 1
    assert "channels_last: project" in capsys.readouterr().out


@pytest.mark.slow  # starts Ray and two DDP workers
def test_gpu_throughput_runs_on_the_cpu_at_its_tiny_size(tmp_path, capsys):
    from benchmarks import gpu_throughput

    result = gpu_throughput.main(["--size", "tiny", "--workers", "1", "2", "--steps", "2", "--warmup", "1",
                                  "--precision", "bf16", "--channels-last", "--storage", str(tmp_path)])
    one, two = result["rows"]
    assert (one["workers"], two["workers"]) == (1, 2) and one["scaling_efficiency"] == 1.0
    assert one["images_per_s"] > 0 and two["images_per_s"] > 0 and result["step_flops"] > 0
    assert 0 < one["peak_fraction"] < float("inf")  # bf16 matmul on a CPU sets no meaningful ceiling
    assert "2 worker(s)" in capsys.readouterr().out


def test_sampler_overhead_times_the_sampler_against_its_forward_passes(capsys):
    from benchmarks import sampler_overhead

    [ddim, langevin] = sampler_overhead.main(["--batch", "4", "--repeats", "1",
                                              "--samplers", "ddim-50", "annealed-langevin"])
    assert ddim["nfe"] == 50 and langevin["nfe"] > 0
    assert ddim["ratio"] == pytest.approx(ddim["seconds"] / ddim["reference_seconds"])
    assert "NFE x forward" in capsys.readouterr().out


def test_few_step_samplers_scores_every_sampler_against_the_reference(capsys):
    from benchmarks import few_step_samplers

    result = few_step_samplers.main(["--nfe", "5", "20", "--samples", "2000", "--seeds", "1"])
    assert set(result["samplers"]) == {"dpmpp_2m_logsnr", "dpmpp_2m_time", "dpmpp_2m_karras", "ddim", "heun",
                                       "diffusers_dpm_solver"}
    assert result["reference"]["nfe"] == 1000 and result["floor"] > 0
    for name, sampler in result["samplers"].items():
        assert [row["nfe"] for row in sampler["rows"]] == ([5, 19] if name == "heun" else [5, 20])
        assert all(row["median"] > 0 for row in sampler["rows"])
    at_5 = {name: sampler["rows"][0]["median"] for name, sampler in result["samplers"].items()}
    assert at_5["dpmpp_2m_logsnr"] < at_5["diffusers_dpm_solver"]  # the grid ends at eps 1e-2 (1e-3 loses here)
    assert at_5["dpmpp_2m_time"] < at_5["diffusers_dpm_solver"]  # the default grid too
    assert "fewest NFE within 10%" in capsys.readouterr().out


@pytest.mark.slow  # a train stage on Ray
def test_pipeline_overhead_sets_the_train_stage_beside_the_plain_loop(capsys):
    from benchmarks import pipeline_overhead

    result = pipeline_overhead.main(["--run", "ddpm", "--steps", "4", "--repeats", "1"])
    assert result["plain"]["ratio"] == 1.0
    assert 0 < result["stage"]["median"] <= result["loop"]["median"]
    assert "train stage end to end" in capsys.readouterr().out


def test_data_path_sets_shards_beside_memory_and_the_training_step(capsys):
    from benchmarks import data_path

    result = data_path.main(["--examples", "64", "--shape", "1", "8", "8", "--per-shard", "16",
                             "--batch", "8", "--batches", "3", "--repeats", "1"])
    assert result["write_mb_s"] > 0 and result["read_mb_s"] > 0 and result["memory_mb_s"] > 0
    assert 0 < result["loader_share"] < 1
    assert "memory copy (reference)" in capsys.readouterr().out


@pytest.mark.slow  # trains the digits classifier (one epoch) and extracts every digit's features
def test_floor_seen_unseen_sets_the_extractors_own_images_beside_unseen_ones(capsys):
    from benchmarks import floor_seen_unseen

    (row,) = floor_seen_unseen.main(["--seeds", "0", "--epochs", "1"])
    assert row["seen_over_unseen"] == pytest.approx(row["seen"] / row["unseen"])
    assert row["seen"] > 0 and row["unseen"] > 0 and 0 <= row["val_accuracy"] <= 1
    assert "697 train / 300 val / 300 classifier / 500 test" in capsys.readouterr().out


@pytest.mark.slow  # trains the digits classifier on the pipeline's split
def test_the_digits_benchmarks_measure_against_val_with_the_pipelines_split():
    """Tuning reads val: the benchmarks' reference is the val split, their floor pool the
    train split, their classifier trained on the classifier split, as the pipeline splits."""
    from benchmarks.digits_fd import DigitsFD
    from diffusion_core.data import sources
    from diffusion_core.features import classifier as clf

    digits = DigitsFD.build()
    x, y = sources.load_source("digits", 0, 0)
    splits = sources.held_out_split(x, y, {"val": 300, "classifier": 300, "test": 500}, 0)
    assert digits.reference_split == "val" and digits.draw == len(digits.test_features) == 300
    assert digits.x_train.numpy().tobytes() == splits["train"][0].tobytes()
    np.testing.assert_allclose(digits.test_features, clf.extract_features(digits.classifier, splits["val"][0]))


@pytest.mark.slow  # trains the digits classifier, three tiny models and samples 1,000 digits each
def test_same_compute_sets_the_recipes_beside_the_diffusers_baseline(capsys):
    from benchmarks import same_compute

    result = same_compute.main(["--seconds", "1", "--step-cap", "3", "--samples", "1000", "--nfe", "2",
                                "--runs", "ddpm-paper", "sde-edm"])
    rows = result["rows"]
    assert set(rows) == {"ddpm-paper", "sde-edm", same_compute.BASELINE, same_compute.PAPER_SAME_SAMPLERS}
    baseline, paper = rows[same_compute.BASELINE], rows[same_compute.PAPER_SAME_SAMPLERS]
    assert baseline["steps"] == rows["ddpm-paper"]["steps"] == 3  # the same steps as the paper recipe
    assert abs(baseline["params"] / rows["ddpm-paper"]["params"] - 1) <= 0.1
    assert baseline["fd"][2] == min(baseline["by"]["ddim"][2], baseline["by"]["dpm_solver"][2])
    verdict = result["verdict"][2]
    (a, ea), (b, eb) = paper["fd"][2], baseline["fd"][2]  # the paper recipe by diffusers' samplers
    assert verdict["paper_gap_in_errors"] == pytest.approx((a - b) / (ea**2 + eb**2) ** 0.5)
    assert verdict["best_improved"] == "sde-edm"
    assert verdict["best_over_baseline"] == pytest.approx(rows["sde-edm"]["fd"][2][0] / baseline["fd"][2][0])
    assert result["reference_split"] == "val"  # settings are chosen on val, never on test
    out = capsys.readouterr().out
    assert "diffusers DDPM" in out and "reference: the val split (300 images)" in out


@pytest.mark.slow  # trains the digits classifier and two tiny models, samples 1,000 digits each
@pytest.mark.parametrize("run", ["ddpm-paper", "ddpm-edm"])
def test_few_step_digits_pairs_each_spacing_with_diffusers_on_the_same_network(run, capsys):
    from benchmarks import few_step_digits

    result = few_step_digits.main(["--seeds", "0", "1", "--steps", "3", "--nfe", "2", "--samples", "1000",
                                   "--run", run])
    assert [set(figures) for figures in result["per_seed"]] == [{"logsnr", "time", "diffusers"}] * 2
    gaps = [f["time"][2][0] - f["diffusers"][2][0] for f in result["per_seed"]]
    mean, error = result["gaps"]["time"][2]
    assert mean == pytest.approx(sum(gaps) / 2) and error == pytest.approx(abs(gaps[0] - gaps[1]) / 2)
    out = capsys.readouterr().out
    assert "time - diffusers over 2 seeds" in out and f"{run} on digits" in out
    assert result["reference_split"] == "val" and "reference: the val split (300 images)" in out
