"""The `diffusion` command: one subcommand per stage, plus `pipeline` (the Prefect flow).

Exit codes: 0 done, 2 bad params (nothing touched), 1 any other named failure.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from flows.config.deviations import deviations_markdown
from flows.config.params import ConfigError, load_params
from flows.distributed.stop_request import signals_interrupt, stop_received
from flows.entry.deploy import check_prefect_api, run_command
from flows.entry.lock import workspace_lock
from flows.entry.pipeline import run_pipeline, with_overrides
from flows.entry.stages import MLFLOW, RAY, STAGES, Command
from flows.stages import evaluate


def _check_params(params) -> dict:
    """`diffusion check-params`: main has loaded and validated the params; the runs they train."""
    return {"ok": True, "frameworks": params.train.frameworks}


# Every subcommand that runs on validated params: the stages (stages.py), then the CLI's own.
COMMANDS = {command.name: command for command in STAGES + (
    Command("pipeline", run_pipeline,  # a stop: Cancelled in Prefect, exit 1 naming it
            services=(MLFLOW, RAY, check_prefect_api)),
    Command("check-params", _check_params, locked=False),
    Command("recipes", deviations_markdown, locked=False),  # each recipe in use beside its paper (docs/recipes.md)
)}
DEPLOYMENTS = ("deploy", "serve")  # the Prefect deployments: deploy.py:run_command reads their options
TEXT_OUTPUT = ("recipes",)  # commands that print markdown, not JSON


def seconds(text: str) -> float:
    """A finite, non-negative number of seconds (argparse names the option when it is not)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in (*COMMANDS, *DEPLOYMENTS):
        cmd = sub.add_parser(name)
        cmd.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
        cmd.add_argument("--profile", metavar="NAME|PATH",
                         help="lay a profile (profiles/NAME.yaml, or a YAML file) over the params "
                              "before validation: docs/profiles.md")
        command = COMMANDS.get(name)
        if command is not None and command.per_run:
            cmd.add_argument("--framework", required=True, help="a run of train.frameworks (ddpm-paper)")
        if name == "evaluate":
            cmd.add_argument("--split", choices=("test", "val"), help="reference split (default: evaluate.split)")
        if command is not None and command.locked:
            cmd.add_argument("--wait", type=seconds, default=0.0, metavar="SECONDS",
                             help="wait this long for another run holding the workspace (default: refuse)")
        if name in ("pipeline", "check-params"):
            cmd.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                             help="train each run of train.frameworks without a seed suffix at each "
                                  "of these seeds, as <run>.s<seed> (training-seed replicates)")
            cmd.add_argument("--ladder", metavar="FRAMEWORK:FROM:TO",
                             help="train the ablation ladder from one recipe to another, one setting at a "
                                  "time, instead of train.frameworks (ddpm:paper:edm)")
        if name in ("deploy", "serve"):
            _deployment_args(cmd, name)
    return parser


def _deployment_args(cmd: argparse.ArgumentParser, name: str) -> None:
    """Options of the scheduled Prefect deployments (flows/entry/deploy.py)."""
    cmd.add_argument("--source", help="data.source of the scheduled runs (default: the params')")
    cmd.add_argument("--frameworks", help="comma-separated frameworks (default: the params')")
    if name == "deploy":
        cmd.add_argument("--pool", help="work pool (default: $PREFECT_DEPLOYMENTS_DEFAULT_WORK_POOL_NAME"
                         " or 'diffusion', made as a process pool if missing)")
        cmd.add_argument("--image", help="container image, for a docker or kubernetes pool")
        cmd.add_argument("--workdir", help="where a process worker runs the flow (default: here)")


def _load(args):
    """The validated params of the command line: --params, with --profile laid over it."""
    return load_params(args.params, args.profile)


def _preflight(command: str) -> None:
    """Bounded checks of the services a command needs, before it writes anything."""
    checks = (check_prefect_api,) if command in DEPLOYMENTS else COMMANDS[command].services
    for check in checks:
        check()


def _run(command: str, params, framework: str | None):
    if framework is not None and framework not in params.train.frameworks:
        raise ConfigError(f"train.frameworks: {framework!r} is not listed {params.train.frameworks}")
    handler = COMMANDS[command].handler
    return handler(params, framework) if framework else handler(params)


TELEMETRY_OFF = {"RAY_USAGE_STATS_ENABLED": "0", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    try:
        params = evaluate.with_split(_load(args), getattr(args, "split", None))
        if getattr(args, "seeds", None) is not None or getattr(args, "ladder", None) is not None:
            params = with_overrides(params, None, None, args.seeds, args.ladder)  # validated: exit 2 if bad
        _preflight(args.command)
        if args.command in DEPLOYMENTS:
            result = run_command(args)
        elif COMMANDS[args.command].locked:
            with workspace_lock(".", args.wait), signals_interrupt(f"diffusion {args.command}"):
                result = _run(args.command, params, getattr(args, "framework", None))
        else:
            result = _run(args.command, params, getattr(args, "framework", None))
    except ConfigError as err:
        print(f"error: bad params: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception:
        if stop_received():  # the stop, raised inside C code and handed back as another error
            print(f"error: {stop_received()}", file=sys.stderr)
            return 1
        raise
    print(result if args.command in TEXT_OUTPUT else json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
