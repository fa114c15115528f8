"""Each benchmark runs at its smallest size and prints its reference beside its own figure.

The checks are what a broken benchmark would get wrong: its reference ran, its ratio divides two
different timings (or figures) the right way round, and its output names both. What the
benchmark is told it measured comes from spies on the functions it calls, not from its own
result; the arithmetic of the shared pieces is checked on made-up inputs."""
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import network_throughput, timing

pytest.importorskip("diffusers")


def spy(monkeypatch, module, name: str) -> list:
    """(args, returned) of every call the benchmark makes to module.name, in order."""
    calls, real = [], getattr(module, name)

    def spied(*args, **kwargs):
        calls.append((args, real(*args, **kwargs)))
        return calls[-1][1]
    monkeypatch.setattr(module, name, spied)
    return calls


@pytest.fixture
def timed(monkeypatch) -> list:
    """(callable, seconds) of every callable `benchmarks.timing` times, in order."""
    return spy(monkeypatch, timing, "seconds")


def back_to_back(timed: list) -> list[tuple[float, float]]:
    """(figure's seconds, reference's seconds) of each pair `paired_ratios` timed: two different
    callables, two different timings."""
    pairs = list(zip(timed[0::2], timed[1::2]))
    assert len(timed) == 2 * len(pairs)
    for ((fn,), a), ((reference,), b) in pairs:
        assert fn is not reference and a != b
    return [(a, b) for (_, a), (_, b) in pairs]


def test_paired_ratios_divide_the_figures_time_by_the_references_in_the_same_repeat(monkeypatch):
    clock, ran = [0.0], []
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    durations = {"figure": iter([3.0, 6.0, 3.3]), "reference": iter([1.0, 2.0, 1.0])}  # repeat 2: a slow machine

    def taking(name):
        def fn():
            ran.append(name)
            clock[0] += next(durations[name])
        return fn

    result = timing.paired_ratios(taking("figure"), taking("reference"), 3)
    assert ran == ["figure", "reference"] * 3  # back to back, the reference in every repeat
    assert (result["ratio"], result["ratio_min"], result["ratio_max"]) == pytest.approx((3.0, 3.0, 3.3))
    assert (result["seconds"], result["reference_seconds"]) == pytest.approx((3.3, 1.0))


def test_network_throughput_compares_equal_sized_networks(timed, capsys):
    [result] = network_throughput.main(["--sizes", "8", "--steps", "1", "--repeats", "1", "--batch", "8"])
    pairs = back_to_back(timed)  # per memory order: diffusers' step, then the project's (the reference)
    assert len(pairs) == len(network_throughput.LAYOUTS)
    out = capsys.readouterr().out
    for layout, (diffusers_s, project_s) in zip(network_throughput.LAYOUTS, pairs):
        row = result[layout]
        project, diffusers = row["project"], row["diffusers"]
        assert abs(project["params"] / diffusers["params"] - 1) <= 0.1
        assert row["ratio"] == pytest.approx(diffusers_s / project_s)  # the project's steps/s over diffusers'
        assert (project["steps_per_s"], diffusers["steps_per_s"]) == pytest.approx((1 / project_s, 1 / diffusers_s))
        # above 0; not bounded by 1: the matmul peak is one timing, and a busy neighbour during it
        # puts a step above it (seen under load)
        assert project["peak_fraction"] > 0 and diffusers["peak_fraction"] > 0
        assert f"{layout}: project {project['steps_per_s']:.2f} steps/s" in out
        assert f"diffusers {diffusers['steps_per_s']:.2f} (" in out


def test_network_throughput_compares_the_paper_network_at_equal_work(timed, capsys):
    [result] = network_throughput.main(["--network", "paper", "--paper-base", "32", "--batch", "2",
                                        "--steps", "1", "--repeats", "1"])
    assert len(back_to_back(timed)) == len(network_throughput.LAYOUTS)
    assert result["diffusers_widths"] == (32, 64, 64, 64) and result["size"] == 32
    for layout in network_throughput.LAYOUTS:
        project, diffusers = result[layout]["project"], result[layout]["diffusers"]
        assert project["params"] == diffusers["params"]  # the same configuration, layer for layer
    flops = result["profile_batch_flops"]  # at the profile's batch, attention included (meta device)
    assert abs(flops["project"] / flops["diffusers"] - 1) < 0.01
    assert "at the profile's batch 128: project " in capsys.readouterr().out


def test_profile_flops_counts_each_profile_at_its_batch(capsys):
    rows = network_throughput.main(["--profile-flops"])
    assert [row["profile"] for row in rows] == list(network_throughput.PROFILE_SHAPES)
    assert rows[0]["params"] == 35_746_307 and all(row["batch"] == 128 for row in rows)
    assert rows[0]["flops_per_step"] < rows[1]["flops_per_step"]  # 64x64 costs more than 32x32
    assert "cifar10-ddpm: 35,746,307 params" in capsys.readouterr().out


@pytest.mark.slow  # starts Ray and two DDP workers
def test_gpu_throughput_runs_on_the_cpu_at_its_tiny_size(tmp_path, monkeypatch, capsys):
    from benchmarks import gpu_throughput

    peaks, runs = spy(monkeypatch, gpu_throughput, "peak_flops"), spy(monkeypatch, gpu_throughput, "run_workers")
    result = gpu_throughput.main(["--size", "tiny", "--workers", "1", "2", "--steps", "2", "--warmup", "1",
                                  "--precision", "bf16", "--channels-last", "--storage", str(tmp_path)])
    one, two = result["rows"]
    [(_, peak)], [(_, ran_one), (_, ran_two)] = peaks, runs  # the device's peak measured in this run
    assert (one["workers"], two["workers"]) == (1, 2) and result["peak_flops"] == peak > 0
    assert (one["images_per_s"], two["images_per_s"]) == (ran_one["images_per_s"], ran_two["images_per_s"])
    assert ran_one["images_per_s"] != ran_two["images_per_s"]
    assert two["scaling_efficiency"] == pytest.approx(ran_two["images_per_s"] / (2 * ran_one["images_per_s"]))
    out = capsys.readouterr().out
    assert f"peak {peak / 1e12:.3f} TFLOP/s" in out and "2 worker(s)" in out and "against 1 worker(s)" in out


def test_sampler_overhead_times_the_sampler_against_its_forward_passes(timed, monkeypatch, capsys):
    from benchmarks import sampler_overhead

    references = spy(monkeypatch, sampler_overhead, "bare_forwards")
    results = sampler_overhead.main(["--batch", "4", "--repeats", "1", "--samplers", "ddim-50", "annealed-langevin"])
    pairs = back_to_back(timed)
    assert [fn for (fn,), _ in timed[1::2]] == [forwards for _, forwards in references]  # the reference ran
    assert [args[2] for args, _ in references] == [result["nfe"] for result in results]  # NFE forwards
    assert results[0]["nfe"] == 50
    out = capsys.readouterr().out
    for result, (sampler_s, reference_s) in zip(results, pairs):
        assert result["ratio"] == pytest.approx(sampler_s / reference_s)
        assert (result["seconds"], result["reference_seconds"]) == (sampler_s, reference_s)
        assert f"{sampler_s:.2f} s against NFE x forward {reference_s:.2f} s" in out


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
def test_pipeline_overhead_sets_the_train_stage_beside_the_plain_loop(monkeypatch, capsys):
    from benchmarks import pipeline_overhead

    plains = spy(monkeypatch, pipeline_overhead, "plain_loop")
    stages = spy(monkeypatch, pipeline_overhead, "pipeline_run")
    result = pipeline_overhead.main(["--run", "ddpm", "--steps", "4", "--repeats", "1"])
    [(_, plain_s)], [(_, (loop_s, stage_s))] = plains, stages  # the reference ran, then the train stage
    assert plain_s != loop_s and result["plain"]["median"] == pytest.approx(4 / plain_s)
    assert (result["loop"]["ratio"], result["stage"]["ratio"]) == pytest.approx((plain_s / loop_s, plain_s / stage_s))
    assert 0 < result["stage"]["median"] <= result["loop"]["median"]
    out = capsys.readouterr().out
    assert "plain in-memory loop (reference)" in out and "train stage end to end" in out


def test_data_path_sets_shards_beside_memory_and_the_training_step(timed, capsys):
    from benchmarks import data_path

    result = data_path.main(["--examples", "64", "--shape", "1", "8", "8", "--per-shard", "16",
                             "--batch", "8", "--batches", "3", "--repeats", "1"])
    # one timing each: shard write, read, 3 loader batches, the memory copy (reference), a training step
    (_, write_s), (_, read_s), (_, loader_s), (_, memory_s), (_, step_s) = timed
    assert len({id(fn) for (fn,), _ in timed}) == 5
    megabytes = result["megabytes"]
    assert (result["write_mb_s"], result["read_mb_s"], result["memory_mb_s"]) == pytest.approx(
        (megabytes / write_s, megabytes / read_s, megabytes / memory_s))
    assert result["loader_share"] == pytest.approx(loader_s / 3 / (loader_s / 3 + step_s))
    out = capsys.readouterr().out
    assert f"memory copy (reference) {result['memory_mb_s']:.0f} MiB/s | shard write" in out
    assert f"against a {1e3 * step_s:.0f} ms training step" in out


@pytest.mark.slow  # trains the digits classifier (one epoch) and extracts every digit's features
def test_floor_seen_unseen_sets_the_extractors_own_images_beside_unseen_ones(monkeypatch, capsys):
    from benchmarks import floor_seen_unseen

    draws = spy(monkeypatch, floor_seen_unseen, "fd_draws")
    (row,) = floor_seen_unseen.main(["--seeds", "0", "--epochs", "1"])
    # against val: the classifier's own images, then unseen train images (the reference); then the report's
    seen, unseen, _ = (float(np.mean(fds)) for _, fds in draws)
    assert (row["seen"], row["unseen"]) == (seen, unseen) and seen != unseen
    assert row["seen_over_unseen"] == pytest.approx(seen / unseen) and 0 <= row["val_accuracy"] <= 1
    out = capsys.readouterr().out
    assert "697 train / 300 val / 300 classifier / 500 test" in out
    assert f"seen {seen:.2f}, unseen {unseen:.2f}" in out


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
def test_same_compute_sets_the_recipes_beside_the_diffusers_baseline(monkeypatch, capsys):
    from benchmarks import same_compute

    baselines = spy(monkeypatch, same_compute, "diffusers_baseline")
    result = same_compute.main(["--seconds", "1", "--step-cap", "3", "--samples", "1000", "--nfe", "2",
                                "--runs", "ddpm-paper", "sde-edm"])
    rows = result["rows"]
    assert set(rows) == {"ddpm-paper", "sde-edm", same_compute.BASELINE, same_compute.PAPER_SAME_SAMPLERS}
    baseline, paper = rows[same_compute.BASELINE], rows[same_compute.PAPER_SAME_SAMPLERS]
    [(args, _)] = baselines  # the reference trained once, for the paper recipe's steps
    assert args[2] == baseline["steps"] == rows["ddpm-paper"]["steps"] == 3
    assert abs(baseline["params"] / rows["ddpm-paper"]["params"] - 1) <= 0.1
    assert paper["fd"][2] != baseline["fd"][2] != rows["sde-edm"]["fd"][2]  # each verdict sets two figures
    assert set(result["verdict"][2]) == {"paper_gap_in_errors", "best_improved", "best_over_baseline"}
    assert result["reference_split"] == "val"  # settings are chosen on val, never on test
    out = capsys.readouterr().out
    assert "diffusers DDPM" in out and "sde-edm" in out and "reference: the val split (300 images)" in out
    assert "NFE 2: paper_gap_in_errors" in out


def test_same_compute_verdict_sets_each_figure_against_the_baselines():
    from benchmarks import same_compute

    rows = {same_compute.BASELINE: {"fd": {10: (2.0, 0.3)}},
            same_compute.PAPER_SAME_SAMPLERS: {"fd": {10: (2.5, 0.4)}}, "ddpm-paper": {"fd": {10: (9.0, 0.1)}},
            "ddpm-edm": {"fd": {10: (1.5, 0.1)}}, "sde-edm": {"fd": {10: (1.2, 0.1)}}}
    verdict = same_compute.verdict(rows, [10])[10]
    assert verdict["paper_gap_in_errors"] == pytest.approx(1.0)  # (2.5 - 2.0) / sqrt(0.3^2 + 0.4^2)
    assert verdict["best_improved"] == "sde-edm" and verdict["best_over_baseline"] == pytest.approx(0.6)


def test_same_compute_baseline_is_the_better_of_diffusers_two_samplers(monkeypatch):
    from benchmarks import same_compute

    figures = {("ddim", 10): (1.5, 0.1), ("dpm_solver", 10): (1.8, 0.1),
               ("ddim", 20): (1.9, 0.1), ("dpm_solver", 20): (1.6, 0.1)}
    monkeypatch.setattr(same_compute, "diffusers_samples", lambda eps, scheduler, kind, n, nfe: (kind, nfe))
    sampled = same_compute.diffusers_sampled(None, None, SimpleNamespace(ratio=figures.get), 8, [10, 20])
    assert sampled["fd"] == {10: (1.5, 0.1), 20: (1.6, 0.1)}
    assert sampled["by"] == {kind: {nfe: figures[kind, nfe] for nfe in (10, 20)} for kind in ("ddim", "dpm_solver")}


@pytest.mark.slow  # trains the digits classifier and two tiny models, samples 1,000 digits each
@pytest.mark.parametrize("run", ["ddpm-paper", "ddpm-edm"])
def test_few_step_digits_pairs_each_spacing_with_diffusers_on_the_same_network(run, capsys):
    from benchmarks import few_step_digits

    result = few_step_digits.main(["--seeds", "0", "1", "--steps", "3", "--nfe", "2", "--samples", "1000",
                                   "--run", run])
    assert [set(figures) for figures in result["per_seed"]] == [{"logsnr", "time", "diffusers"}] * 2
    assert all(f["time"][2] != f["diffusers"][2] for f in result["per_seed"])  # the reference sampled too
    assert set(result["gaps"]) == {"logsnr", "time"}
    out = capsys.readouterr().out
    assert "time - diffusers over 2 seeds" in out and f"{run} on digits" in out
    assert result["reference_split"] == "val" and "reference: the val split (300 images)" in out


def test_few_step_digits_pairs_each_seeds_spacing_with_diffusers_on_that_seed():
    from benchmarks.few_step_digits import DIFFUSERS, paired

    per_seed = [{"time": {10: (2.0, 0.1)}, DIFFUSERS: {10: (1.7, 0.1)}},
                {"time": {10: (1.5, 0.1)}, DIFFUSERS: {10: (1.6, 0.1)}}]
    mean, error = paired(per_seed, "time", 10)  # gaps +0.3 and -0.1
    assert mean == pytest.approx(0.1) and error == pytest.approx(0.2)
