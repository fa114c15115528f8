"""Prefect deployments: a weekly retrain (the whole pipeline) and a nightly evaluation, each on
a cron schedule, with the data set and frameworks as parameters.

`diffusion serve` runs them from one long-lived process on this machine; `diffusion deploy`
registers them with a work pool whose workers run them (`prefect worker start --pool NAME`),
which is the cloud case. Prefect's API is PREFECT_API_URL (its ephemeral server when unset).
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.config.params import load_params
from flows.entry.lock import workspace_lock
from flows.entry.pipeline import TASKS, with_overrides

POOL_ENV = "PREFECT_DEPLOYMENTS_DEFAULT_WORK_POOL_NAME"  # Prefect's own setting
DEFAULT_POOL = "diffusion"
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Schedule:
    name: str
    entrypoint: str  # module path of the flow, so a worker imports the installed package
    cron: str  # UTC
    description: str


SCHEDULES = (
    Schedule("weekly-retrain", "flows.entry.pipeline.pipeline_flow", "0 3 * * 0",
             "Sunday 03:00 UTC: prepare, train, sample and evaluate every framework"),
    Schedule("nightly-evaluation", "flows.entry.deploy.evaluation_flow", "0 2 * * *",
             "Daily 02:00 UTC: sample and evaluate each framework's current trained model"),
)


class PrefectUnavailable(RuntimeError):
    """The Prefect API named by PREFECT_API_URL does not answer."""


@flow(name="diffusion-evaluation", log_prints=True)
def evaluation_flow(params_path: str | None = "params.yaml", source: str | None = None,
                    frameworks: list[str] | None = None, profile: str | None = None) -> dict:
    """Sample and evaluate each framework's current model again; publish one summary table."""
    params = with_overrides(load_params(params_path, profile), source, frameworks)
    results = {}
    with workspace_lock("."):
        for framework in params.train.frameworks:
            TASKS["sample"](params, framework)
            results[framework] = TASKS["evaluate"](params, framework)
    rows = [f"| {fw} | " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(m.items())
                                      if isinstance(v, float)) + " |" for fw, m in results.items()]
    create_markdown_artifact("\n".join([f"# Evaluation on `{params.data.dataset}` ({params.data.source})", "",
                                        "| framework | metrics |", "|---|---|", *rows]),
                             key="diffusion-evaluation-summary", description="Nightly evaluation")
    return results


def api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def check_prefect_api(timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Fail within timeout_s, naming the URL and its variable, if the Prefect API is away."""
    url = api_url()
    if url is None:  # Prefect starts its ephemeral server in-process
        return
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # something answered; Prefect's own client reports what is wrong
    except (OSError, ValueError) as err:
        raise PrefectUnavailable(f"cannot reach the Prefect API at {url} (set by PREFECT_API_URL) "
                                 f"within {timeout_s:g} s: {err}") from err


def _load_flow(entrypoint: str):
    import importlib

    module, _, name = entrypoint.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build(params_path: str = "params.yaml", source: str | None = None,
          frameworks: list[str] | None = None, pool: str | None = None,
          workdir: str | None = None, profile: str | None = None) -> list:
    """One RunnerDeployment per schedule; `workdir` is where a process worker runs the flow;
    `profile` is laid over the params file each time a scheduled run loads it."""
    from prefect.types.entrypoint import EntrypointType

    parameters = {"params_path": params_path, "source": source, "frameworks": frameworks, "profile": profile}
    return [_load_flow(s.entrypoint).to_deployment(
        name=s.name, cron=s.cron, description=s.description, tags=["diffusion"],
        parameters={k: v for k, v in parameters.items() if v is not None},
        work_pool_name=pool, job_variables={"working_dir": workdir} if workdir else None,
        entrypoint_type=EntrypointType.MODULE_PATH) for s in SCHEDULES]


def pool_name(pool: str | None = None) -> str:
    """--pool, else PREFECT_DEPLOYMENTS_DEFAULT_WORK_POOL_NAME, else 'diffusion'."""
    return pool or os.environ.get(POOL_ENV) or DEFAULT_POOL


def _ensure_pool(name: str) -> str:
    """The pool's type; creates a process pool when none has that name (a cloud pool, of type
    kubernetes or docker, is made with its infrastructure: see infra/README.md)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_work_pool(name).type
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            print(f"created the process work pool {name!r}")
            return "process"


def deploy(params_path: str = "params.yaml", source: str | None = None,
           frameworks: list[str] | None = None, pool: str | None = None,
           image: str | None = None, workdir: str | None = None, profile: str | None = None) -> dict:
    """Register every schedule with the work pool; returns {deployment name: id}."""
    check_prefect_api()
    pool = pool_name(pool)
    if _ensure_pool(pool) == "process":  # a local worker runs the flow in this checkout
        workdir = os.path.abspath(workdir or os.getcwd())
    deployments = build(params_path, source, frameworks, pool, workdir, profile)
    ids = {f"{d.flow_name}/{d.name}": str(d.apply(work_pool_name=pool, image=image))
           for d in deployments}
    print(f"deployed {sorted(ids)} to the work pool {pool!r}; "
          f"run them with: prefect worker start --pool {pool}")
    return ids


def serve(params_path: str = "params.yaml", source: str | None = None,
          frameworks: list[str] | None = None, limit: int = 1, profile: str | None = None) -> None:
    """Create the deployments and run their scheduled and triggered runs from this process."""
    from prefect import serve as prefect_serve

    check_prefect_api()
    prefect_serve(*build(params_path, source, frameworks, profile=profile), limit=limit)


def run_command(args) -> dict:
    """`diffusion deploy` and `diffusion serve` with their command-line options."""
    frameworks = args.frameworks.split(",") if args.frameworks else None
    with_overrides(load_params(args.params, args.profile), args.source, frameworks)  # ConfigError: exit 2
    if args.command == "serve":
        serve(args.params, args.source, frameworks, profile=args.profile)
        return {"served": [s.name for s in SCHEDULES]}
    return deploy(args.params, args.source, frameworks, args.pool, args.image, args.workdir, args.profile)
