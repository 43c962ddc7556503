"""``homefeed run | airflow | backfill | stack …``: the platform on this machine."""

from __future__ import annotations

import contextlib
import json
from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer

from homefeed.cli.common import ConfigOption, config as _config, registry_errors as _registry_errors

commands = typer.Typer()
stack_app = typer.Typer(help="The deployed topology on this machine: Postgres, MLflow server, S3, Spark cluster, Airflow, serve.",
                        no_args_is_help=True)
commands.add_typer(stack_app, name="stack")


def _say(message: str) -> None:
    typer.echo(message, err=True)


@contextlib.contextmanager
def _platform_errors():
    from homefeed.airflow_setup import PlatformError

    try:
        yield
    except PlatformError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(exc.exit_code) from None


@commands.command()
def airflow(
    port: Annotated[int, typer.Option(help="API server / UI port on 127.0.0.1")] = 8080,
    config: ConfigOption = None,
) -> None:
    """Start Airflow (api-server, scheduler, dag-processor, triggerer) with the project's DAGs on
    127.0.0.1 and print the login."""
    from homefeed import airflow_setup, local_platform

    env, user, password = airflow_setup.standalone_env(_config(config), port, config)
    with _platform_errors():
        airflow_setup.migrate_airflow_db(env)
    typer.echo(f"Airflow UI: http://127.0.0.1:{port}   login: {user} / {password}   (AIRFLOW_HOME={env['AIRFLOW_HOME']})")
    typer.echo("DAGs: homefeed_retrain (trigger with the parameter form), homefeed_promote. Ctrl-C stops it.")
    raise typer.Exit(local_platform.supervise(airflow_setup.airflow_components(port), env, typer.echo))


@commands.command()
def backfill(
    from_date: Annotated[str, typer.Option("--from-date", help="First logical date, YYYY-MM-DD")],
    to_date: Annotated[str, typer.Option("--to-date", help="Last logical date, YYYY-MM-DD")],
    conf: Annotated[str, typer.Option("--conf", help="homefeed_retrain params as JSON, e.g. {\"raw\": \"/data/raw\", \"window_days\": 7}")] = "{}",
    config: ConfigOption = None,
) -> None:
    """Backfill homefeed_retrain on the embedded Airflow: one run per scheduled date in the range.

    `airflow backfill create` with the embedded Airflow's environment (retried while its SQLite is
    locked); the scheduler of `homefeed airflow` runs the runs, one at a time.
    """
    cfg = _config(config)
    try:
        if date.fromisoformat(from_date) > date.fromisoformat(to_date):
            raise ValueError(f"--from-date {from_date} is after --to-date {to_date}")
        if not isinstance(json.loads(conf), dict):
            raise ValueError(f"--conf must be a JSON object, got {conf}")
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    from homefeed import airflow_setup

    with _platform_errors():
        airflow_setup.create_backfill(airflow_setup.airflow_env(cfg, config), "homefeed_retrain", from_date, to_date, conf, _say)


@commands.command()
def run(
    raw: Annotated[Optional[Path], typer.Option(help="Raw data root; default: generate synthetic data under the storage root")] = None,
    label: Annotated[Optional[str], typer.Option(help="Run name; default: a timestamp")] = None,
    s3: Annotated[bool, typer.Option("--s3", help="S3 as the storage of record: a local SeaweedFS server (what `make run S3=1` runs)")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Airflow's, Spark's and GX's lines too (always in the run's run.log)")] = False,
    config: ConfigOption = None,
) -> None:
    """The main job: a full retraining run of the `homefeed_retrain` DAG on the embedded default.

    The terminal shows homefeed's lines (a line per stage, training progress every ~10 s); the
    whole output of the run is kept in `<storage root>/runs/<run>/run.log`."""
    from homefeed import local_platform, pipeline, registry

    with _platform_errors():
        cfg, directory = local_platform.run_retraining(_config(config), raw, label, s3, config, verbose, _say)
    with _registry_errors():
        state = registry.state(cfg)
    typer.echo("")
    evaluation, gate = pipeline.recorded(directory, pipeline.Evaluated), pipeline.recorded(directory, pipeline.Gated)
    for line in local_platform.run_summary(evaluation, gate, state, cfg.registry.model_name):
        typer.echo(line)
    typer.echo(f"report: {directory / 'report.html'}")
    command, env, page = registry.ui_command(cfg)
    typer.echo(f"MLflow UI: {' '.join(f'{k}={v}' for k, v in env.items())} {' '.join(command)}")
    typer.echo(f"    then open {page}")
    if state.champion:
        typer.echo(f"serve the champion: .venv/bin/homefeed serve   (POST /rank on http://{cfg.serving.host}:{cfg.serving.port})")
        typer.echo(_experiment_hint(state))


def _experiment_hint(state) -> str:
    """How to test the next challenger online (the offline gate is not the last word)."""
    if state.challenger and state.challenger != state.champion:
        return (f"test challenger v{state.challenger} online: .venv/bin/homefeed experiment start --challenger {state.challenger} "
                "--traffic 0.2 --reason '…'   (then `homefeed experiment readout NAME`)")
    return ("test the next challenger online: after the next retraining registers one, "
            ".venv/bin/homefeed experiment start --challenger N --traffic 0.2 --reason '…'")


# --------------------------------------------------------------------------- the one-machine stack
@contextlib.contextmanager
def _stack_errors():
    from homefeed.stack import StackError

    try:
        yield
    except StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@stack_app.command("up")
def stack_up(config: ConfigOption = None) -> None:
    """Start every component that is not running (each waits until it answers)."""
    from homefeed.stack import Stack

    stack = Stack(_config(config))
    with _stack_errors():
        timings = stack.up(_say)
    typer.echo(f"up in {sum(timings.values()):.0f} s; state, logs and credentials (0600) in {stack.home}")
    _print_stack(stack)
    api = stack.components().get("airflow-api-server")
    if api is not None:
        typer.echo(f"Airflow UI: {api.url}   login: admin / {stack.credentials()['airflow_password']}")
    typer.echo("the stack's environment for other commands: `homefeed stack env` (e.g. eval \"$(homefeed stack env)\")")


@stack_app.command("down")
def stack_down(config: ConfigOption = None) -> None:
    """Stop exactly the processes `stack up` started (their process groups)."""
    from homefeed.stack import Stack

    with _stack_errors():
        stopped = Stack(_config(config)).down(_say)
    typer.echo(f"stopped {len(stopped)} components" if stopped else "nothing was running")


@stack_app.command("status")
def stack_status(config: ConfigOption = None) -> None:
    """Each component with its state, pid and port; exit 1 when a recorded one is not running."""
    from homefeed.stack import Stack

    stack = Stack(_config(config))
    _print_stack(stack)
    if any(not c.running() for c in stack.status()):
        raise typer.Exit(1)


@stack_app.command("env")
def stack_env(config: ConfigOption = None) -> None:
    """The stack's configuration as `export NAME=value` lines (the compose file's variable names)."""
    import shlex

    from homefeed.stack import Stack

    for name, value in sorted(Stack(_config(config)).environment().items()):
        typer.echo(f"export {name}={shlex.quote(value)}")


def _print_stack(stack) -> None:
    components = stack.status()
    if not components:
        typer.echo("no component recorded (run `homefeed stack up`)")
    for c in components:
        typer.echo(f"{c.name:24} {'running' if c.running() else 'STOPPED':8} pid {c.pid or '-':<8} port {c.port or '-':<6} {c.url}")

