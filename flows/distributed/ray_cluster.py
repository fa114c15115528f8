"""Connecting to Ray: a local instance on 127.0.0.1 unless RAY_ADDRESS names a cluster."""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

LOCAL_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Keeps a single-node Ray on loopback instead of the machine's interface address; read
    # when ray is imported, so connect() sets it first.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",  # a private instance on loopback needs no token
    # Ray starts its workers at nice 15: beside any busy process a torch worker whose threads
    # share a core then crawls. The local instance runs them at the driver's priority.
    "RAY_worker_niceness": "0",
    # Ray Train's controller polls its workers every 2 s by default, and a run's start, each
    # checkpoint's registration and its end each wait for polls, which dominates a short run
    # (docs/performance.md). A local instance's handful of workers is cheap to poll often.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    # Ray Train's preemption watcher asks Ray every 5 s whether a cloud provider is draining the
    # node; nothing drains a local instance, and its actor takes CPU from training (its process
    # wakes 100 times a second, as every Ray worker process does; docs/performance.md).
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Ray Train sends a worker's print() to its logger and, with stdout wrapped, to stdout as
    # well: every progress line came out twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


# The tracking server's credentials, passed from the driver's environment to a cluster's
# processes: Ray Train workers log into the driver's MLflow run.
FORWARDED_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


class RayUnavailable(RuntimeError):
    """Ray could not be reached or cannot offer what the params ask for."""


def check_address(address: str | None = None, timeout_s: float = 5.0) -> None:
    """Fail within timeout_s, naming RAY_ADDRESS, if nothing listens at its host:port
    (ray.init would wait much longer); 'auto' and addresses without a port are left to Ray."""
    address = address or os.environ.get("RAY_ADDRESS")
    hostport = (address or "").split("://")[-1].rstrip("/")
    if ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as err:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address!r} (set by RAY_ADDRESS) "
                             f"within {timeout_s:g} s: {err}") from err


_CONNECTING = threading.Lock()


def connect() -> None:
    """ray.init against RAY_ADDRESS, or a local instance bound to 127.0.0.1. The process keeps
    its SIGTERM handler: ray.init puts in one that calls sys.exit, which crashed a flow run
    stopped while sampling instead of cancelling it (stop_request.signals_interrupt)."""
    handler = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        with _CONNECTING:  # runs side by side (threads of one driver) start one instance
            _init()
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


def _init() -> None:
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        for key, value in LOCAL_ENV.items():
            os.environ.setdefault(key, value)
    import ray

    token_given = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    if address and token_given and "RAY_AUTH_MODE" not in os.environ:
        # Ray sends its token only in token mode, which it infers only without an explicit
        # address; this sets RAY_AUTH_MODE=token and re-reads Ray's config (read at import)
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()

    if ray.is_initialized():
        return
    if address:
        import diffusion_core
        import flows

        # A cluster's nodes get this checkout's code with the job, not from their own disks.
        runtime_env = {"py_modules": [os.path.dirname(diffusion_core.__file__),
                                      os.path.dirname(flows.__file__)]}
        credentials = {key: os.environ[key] for key in FORWARDED_ENV if os.environ.get(key)}
        if credentials:
            runtime_env["env_vars"] = credentials
        check_address(address)
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        except Exception as err:  # ray raises ConnectionError, RuntimeError or its own types
            raise RayUnavailable(f"cannot reach the Ray cluster at {address!r} "
                                 f"(set by RAY_ADDRESS): {err}") from err
        return
    # address="local": always a new instance of this process's own, never one that another
    # workspace's `ray start` left on this machine (ray.init's default would join that)
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=True,
             runtime_env={"worker_process_setup_hook": f"{__name__}.{quiet_local_worker.__name__}"})


def quiet_local_worker() -> None:
    """Run in each worker of the local instance as it starts.

    Ray's state API, which Ray Train's placement-group cleaner asks every second whether the
    controller lives, finds its cluster by looking for Ray processes on the machine; with a
    second workspace's instance running it found two and its thread died with a
    ConnectionError traceback. RAY_ADDRESS names the worker's own instance instead. A local
    instance runs no dashboard (and needs no cleaner: its groups end with the driver), so each
    ask still fails: that warning is silenced (80 a minute in the training log)."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def run_needs(ray_params) -> dict:
    """What one run's workers ask of the cluster: {"CPU": ..., "GPU": ...}."""
    return {"CPU": ray_params.num_workers * ray_params.cpus_per_worker,
            "GPU": ray_params.num_workers if ray_params.use_gpu else 0}


def runs_that_fit(ray_params, runs: int) -> int:
    """How many of `runs` independent runs go side by side on the cluster (runs_in)."""
    if runs <= 1 or ray_params.runs_at_once == 1:
        return 1
    connect()
    import ray

    return runs_in(ray.cluster_resources(), ray_params, runs)


def runs_in(total: dict, ray_params, runs: int) -> int:
    """As many of `runs` as a cluster of `total` resources holds at ray.num_workers x
    ray.cpus_per_worker CPUs (and GPUs) each (a run's stages never ask for more: its training
    workers, then its sampling and feature actors), at most ray.runs_at_once when that is
    set, and at least one (a run that does not fit waits, then fails naming the shortfall)."""
    need = run_needs(ray_params)
    room = min(int(total.get(kind, 0) // amount) for kind, amount in need.items() if amount)
    return max(1, min(runs, room, ray_params.runs_at_once or runs))


def require_resources(ray_params, poll_s: float = 1.0) -> None:
    """Wait at most ray.resources_timeout_s until the cluster has every training worker's CPUs
    (and GPUs) free, not merely in its total (other jobs' actors and tasks hold part of it);
    past that, fail naming what was asked, what is there in total and what is free, rather than
    hang in fit()."""
    import ray

    need = run_needs(ray_params)
    deadline = time.time() + ray_params.resources_timeout_s
    while True:
        free = ray.available_resources()
        if all(free.get(kind, 0) >= amount for kind, amount in need.items()):
            return
        if time.time() > deadline:
            raise RayUnavailable(_shortfall(ray_params, need, ray.cluster_resources(), free))
        time.sleep(poll_s)


def _shortfall(ray_params, need: dict, total: dict, free: dict) -> str:
    """What the workers ask for against the cluster's total and free resources, and what to do."""
    where = os.environ.get("RAY_ADDRESS") or "the local Ray instance"

    def amounts(resources: dict) -> str:
        return " and ".join(f"{resources.get(kind, 0):g} {kind}" for kind in need)

    fits = all(total.get(kind, 0) >= amount for kind, amount in need.items())
    advice = ("other jobs hold the rest: wait for them to end, or raise ray.resources_timeout_s" if fits else
              "more than the cluster has: lower ray.num_workers or ray.cpus_per_worker, or add nodes")
    return (f"ray.num_workers={ray_params.num_workers} x ray.cpus_per_worker={ray_params.cpus_per_worker} "
            f"(use_gpu={ray_params.use_gpu}) asks for {amounts(need)}, but after "
            f"{ray_params.resources_timeout_s:g} s {where} has {amounts(free)} free of "
            f"{amounts(total)} in total; {advice}")
