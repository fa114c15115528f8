"""Connecting to Ray: a local instance on 127.0.0.1 unless RAY_ADDRESS names a cluster."""
from __future__ import annotations

import os
import socket
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
}


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


def connect() -> None:
    """ray.init against RAY_ADDRESS, or a local instance bound to 127.0.0.1."""
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        for key, value in LOCAL_ENV.items():
            os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return
    if address:
        import diffusion_core
        import flows

        # A cluster's nodes get this checkout's code with the job, not from their own disks.
        runtime_env = {"py_modules": [os.path.dirname(diffusion_core.__file__),
                                      os.path.dirname(flows.__file__)]}
        check_address(address)
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        except Exception as err:  # ray raises ConnectionError, RuntimeError or its own types
            raise RayUnavailable(f"cannot reach the Ray cluster at {address!r} "
                                 f"(set by RAY_ADDRESS): {err}") from err
        return
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=True)


def require_resources(ray_params, poll_s: float = 1.0) -> None:
    """Wait at most ray.resources_timeout_s for the cluster to offer every training worker;
    past that, fail with what was asked and what is there rather than hang in fit()."""
    import ray

    need_cpu = ray_params.num_workers * ray_params.cpus_per_worker
    need_gpu = ray_params.num_workers if ray_params.use_gpu else 0
    deadline = time.time() + ray_params.resources_timeout_s
    while True:
        have = ray.cluster_resources()
        if have.get("CPU", 0) >= need_cpu and have.get("GPU", 0) >= need_gpu:
            return
        if time.time() > deadline:
            where = os.environ.get("RAY_ADDRESS") or "the local Ray instance"
            raise RayUnavailable(
                f"ray.num_workers={ray_params.num_workers} x ray.cpus_per_worker="
                f"{ray_params.cpus_per_worker} (use_gpu={ray_params.use_gpu}) asks for {need_cpu:g} "
                f"CPU and {need_gpu} GPU, but {where} offers {have.get('CPU', 0):g} CPU and "
                f"{have.get('GPU', 0):g} GPU after {ray_params.resources_timeout_s:g} s")
        time.sleep(poll_s)
