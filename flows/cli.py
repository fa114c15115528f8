"""The `diffusion` command: one subcommand per stage, plus `pipeline` (the Prefect flow).

Exit codes: 0 done, 2 bad params (nothing touched), 1 any other named failure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .config import ConfigError, load_params

STAGES = ("prepare", "train-classifier", "train", "sample", "evaluate", "register", "compare")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in STAGES + ("pipeline", "check-params", "deploy", "serve"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
        if name in ("train", "sample", "evaluate", "register"):
            cmd.add_argument("--framework", required=True)
        if name in ("deploy", "serve"):
            _deployment_args(cmd, name)
    return parser


def _deployment_args(cmd: argparse.ArgumentParser, name: str) -> None:
    """Options of the scheduled Prefect deployments (flows/deploy.py)."""
    cmd.add_argument("--source", help="data.source of the scheduled runs (default: the params')")
    cmd.add_argument("--frameworks", help="comma-separated frameworks (default: the params')")
    if name == "deploy":
        cmd.add_argument("--pool", help="work pool (default: $PREFECT_DEPLOYMENTS_DEFAULT_WORK_POOL_NAME"
                         " or 'diffusion', made as a process pool if missing)")
        cmd.add_argument("--image", help="container image, for a docker or kubernetes pool")
        cmd.add_argument("--workdir", help="where a process worker runs the flow (default: here)")


def _preflight(command: str) -> None:
    """Bounded checks of the services a command needs, before it writes anything."""
    from . import ray_cluster, tracking

    if command in ("train", "sample", "evaluate", "register", "compare", "pipeline"):
        tracking.check_server()
    if command in ("train", "sample", "evaluate", "pipeline"):  # Ray Train and actor pools
        ray_cluster.check_address()
    if command in ("pipeline", "deploy", "serve"):
        from .deploy import check_prefect_api

        check_prefect_api()


def _run(command: str, params, framework: str | None):
    from . import evaluate, stages

    if framework is not None and framework not in params.train.frameworks:
        raise ConfigError(f"train.frameworks: {framework!r} is not listed {params.train.frameworks}")
    if command == "pipeline":
        from .pipeline import pipeline_flow

        return pipeline_flow(params_path=None, params=params)
    handlers = {"prepare": stages.prepare, "train-classifier": stages.train_classifier,
                "train": stages.train, "sample": stages.sample, "evaluate": evaluate.evaluate,
                "register": _register, "compare": _compare}
    if command == "check-params":
        return {"ok": True}
    fn = handlers[command]
    return fn(params, framework) if framework else fn(params)


def _register(params, framework: str) -> dict:
    from .registry import register

    return register(params, framework)


def _compare(params) -> dict:
    from .compare import compare_and_publish

    result = compare_and_publish(params)
    return {key: value for key, value in result.items() if key != "markdown"}


TELEMETRY_OFF = {"RAY_USAGE_STATS_ENABLED": "0", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "DVC_NO_ANALYTICS": "1"}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    try:
        params = load_params(args.params)
        _preflight(args.command)
        if args.command in ("deploy", "serve"):
            from .deploy import run_command

            result = run_command(args)
        else:
            result = _run(args.command, params, getattr(args, "framework", None))
    except ConfigError as err:
        print(f"error: bad params: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
