"""Shared test set-up.

Tiers: unmarked = fast (the math, params, data and shards, the local sqlite MLflow registry: seconds each); `slow` = the service tier (Ray, an MLflow or Prefect server, DVC, the CLI in a process of its own, a pipeline, or a training run or stage of more than ~5 s).
"""
import pytest
import torch

from tests.tiny import TINY_SDE, in_workspace, tiny_params


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The math tests run thousands of ops on small tensors; with intra-op threads on a loaded
    2-core machine they run tens of times slower (threads wait on each other), so use one.
    Session-wide, so module-scoped fixtures (test_vlb's bound: 1000 steps of small ops) run
    with one thread too. Ray Train workers set their own thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread_again(_one_thread):
    """Back to one thread after a test that changed it, before the next test's fixtures."""
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_vp_runs(tmp_path_factory):
    """prepare -> train (Ray Train, 2 workers) -> sample -> evaluate of ddpm and sde on the tiny
    checkerboard, once for the session: each Ray Train run costs seconds of start-up, so the
    modules that check these runs (stages, MLflow, registry, sde sampling, the planned steps)
    share them. (root, params, {framework: (train summary, sample info, metrics)})."""
    from flows.config.params import parse_params
    from flows.stages import data, evaluate, sample, train

    root = tmp_path_factory.mktemp("tiny_vp_runs")
    with in_workspace(root):
        params = parse_params(tiny_params(train={"frameworks": ["ddpm", "sde"]}, sde=TINY_SDE))
        data.prepare(params)
        out = {framework: (train.train(params, framework), sample.sample(params, framework),
                           evaluate.evaluate(params, framework)) for framework in ("ddpm", "sde")}
    return root, params, out
