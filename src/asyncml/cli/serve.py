"""``asyncml serve``: models and pipelines over HTTP on uvicorn, until SIGTERM or Ctrl-C.

A thin wrapper of :mod:`asyncml.server`: it resolves the REFs, loads each model (or opens
each pipeline) with the options given, runs :func:`asyncml.server.serving` and turns errors
into one line and an exit code. Starlette and uvicorn are imported only when the command
runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from .._errors import AsyncmlError, SetupError
from .._gc import fewer_collections
from .._loaded import LoadedModel, load
from .._ref import RefError, resolve
from ..pipeline import Pipeline, PipelineService
from ._app import main
from ._options import MAX_WORKERS, Finite, count, one_line
from ._ray import RayUnavailable, file_modules, ray_for

EXIT_FAILED = 1
EXIT_USAGE = 2
_MIB = 2**20


class _OneLineErrors(click.Command):
    """Reports a bad option in one line (``asyncml serve: error: ...``), exit code 2."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as error:
            _fail(error.format_message(), EXIT_USAGE)


@main.command("serve", cls=_OneLineErrors, context_settings={"max_content_width": 100})
@click.argument("refs", nargs=-1, required=True, metavar="REF [REF ...]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--executor",
    type=click.Choice(["auto", "inline", "thread", "process", "ray"]),
    default="auto",
    show_default=True,
    help="Where model code runs: the event loop (inline: async models), threads, processes "
    "(GIL-bound or crash-prone models), Ray actors, or auto (threads, or the event loop for "
    "async models).",
)
@click.option(
    "--ray-address",
    metavar="ADDR",
    help="With --executor ray: the Ray cluster to run on (default: a local Ray).",
)
@click.option("--workers", type=count(MAX_WORKERS), help="Workers per model (default 1).")
@click.option(
    "--max-batch-size",
    type=count(),
    help="Most items per batch (default: the model's).",
)
@click.option(
    "--max-wait",
    type=Finite(min=0),
    metavar="S",
    help="Seconds a free worker may hold a partial batch while others run (default: the model's).",
)
@click.option(
    "--timeout",
    type=Finite(min=0, min_open=True),
    metavar="S",
    help="Default deadline of each item, in seconds (default: none); requests may set a "
    "tighter one.",
)
@click.option(
    "--max-queue",
    type=count(),
    metavar="N",
    help="Items queued per model (or inside a pipeline) before requests are refused with 503 "
    "(default 1024).",
)
@click.option(
    "--max-body-mib",
    type=Finite(min=0, min_open=True),
    default=16.0,
    show_default=True,
    help="Largest request body, in MiB (larger: 413).",
)
@click.option(
    "--shutdown-timeout",
    type=Finite(min=0),
    default=30.0,
    show_default=True,
    metavar="S",
    help="Seconds in-flight requests get to finish after SIGTERM.",
)
@click.option("--access-log", is_flag=True, help="Log every request.")
def serve(
    refs: Sequence[str],
    host: str,
    port: int,
    executor: str,
    ray_address: str | None,
    workers: int | None,
    max_batch_size: int | None,
    max_wait: float | None,
    timeout: float | None,
    max_queue: int | None,
    max_body_mib: float,
    shutdown_timeout: float,
    access_log: bool,
) -> None:
    """Serve the models REF ... over HTTP.

    Each REF is path/to/file.py:name or package.module:name, naming a Model subclass or
    instance, a function of a batch, or a model made by asyncml.load() (which keeps its own
    options). Each model is served under its name: POST /v1/models/NAME/predict with
    {"input": x} or {"inputs": [...]}, and the Open Inference Protocol (v2) endpoints.
    /healthz, /readyz, /metrics and /openapi.json describe the server.

    A REF may also name an asyncml.Pipeline, served under the REF's name: each item goes
    through every stage. Its stages choose their own executors, workers and batching;
    --max-queue and --timeout apply to it.

    \b
    Exit codes:
      0  stopped by SIGTERM or Ctrl-C, after finishing the requests in flight
      1  a model failed to start (its setup() raised)
      2  bad usage: a wrong option, a REF that does not import or names no model
    """
    if ray_address is not None and executor != "ray":
        _fail("--ray-address needs --executor ray", EXIT_USAGE)
    options = {
        "executor": executor,
        "workers": workers,
        "max_batch_size": max_batch_size,
        "max_wait": max_wait,
        "timeout": timeout,
        "max_queue": max_queue,
    }
    models = [_servable(ref, options) for ref in refs]
    from ..server import create_app

    try:
        app = create_app(models, max_body_size=max(1, int(max_body_mib * _MIB)))
    except (TypeError, ValueError) as error:
        _fail(str(error), EXIT_USAGE)
    try:
        with ray_for(executor, ray_address, file_modules(list(refs))):
            _run_until_signalled(
                app,
                host=host,
                port=port,
                shutdown_timeout=shutdown_timeout,
                access_log=access_log,
            )
    except RayUnavailable as error:
        _fail(str(error), EXIT_USAGE)
    except SetupError as error:
        _fail(str(error), EXIT_FAILED)
    except OSError as error:  # the address is taken, or not ours to bind
        _fail(f"cannot listen on {host}:{port}: {error.strerror or error}", EXIT_USAGE)


#: The options a pipeline takes; its stages choose the others.
_PIPELINE_OPTIONS = ("max_queue", "timeout")


def _servable(ref: str, options: dict[str, Any]) -> LoadedModel[Any, Any] | PipelineService:
    """The loaded model, or the opened pipeline, that ``ref`` names (not yet started)."""
    try:
        obj = resolve(ref).obj
    except RefError as error:
        _fail(str(error), EXIT_USAGE)
    given = [name for name, value in options.items() if value not in (None, "auto")]
    if isinstance(obj, LoadedModel | PipelineService):
        if given:
            message = f"{ref!r} is already loaded with its own options; drop {_flags(given)}"
            _fail(message, EXIT_USAGE)
        return obj
    if isinstance(obj, Pipeline):
        refused = [name for name in given if name not in _PIPELINE_OPTIONS]
        if refused:
            _fail(
                f"{ref!r} is a pipeline: its stages choose their executors, workers and "
                f"batching; drop {_flags(refused)}",
                EXIT_USAGE,
            )
        name = ref.rpartition(":")[2].rpartition(".")[2]  # as a function is served
        chosen = {key: options[key] for key in _PIPELINE_OPTIONS if options[key] is not None}
        return obj.open(name=name, **chosen)
    model: Any = obj
    try:
        loaded: LoadedModel[Any, Any] = load(model, **options)
        return loaded
    except (TypeError, ValueError) as error:
        _fail(f"{ref!r}: {error}", EXIT_USAGE)


def _flags(names: list[str]) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in names)


def _run_until_signalled(app: Any, **options: Any) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it on Linux and macOS
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(app, **options))


async def _serve(app: Any, **options: Any) -> None:
    """Serves until stopped; a model that fails to start stops the server. Once every model
    is loaded, the garbage collector skips what start-up made and collects less often
    (the process is the server's: see :mod:`asyncml._gc`).

    Raises:
        SetupError: a model failed to start.
    """
    from ..server import serving

    failures: list[SetupError] = []
    with contextlib.ExitStack() as settings:
        async with serving(app, handle_signals=True, **options) as server:
            names = ", ".join(served.name for served in app.models)
            click.echo(f"asyncml serve: {names} at {server.url}: loading", err=True)

            async def report_ready() -> None:
                try:
                    await app.wait_ready()
                except SetupError as error:
                    failures.append(error)
                    server.stop()
                except AsyncmlError:  # stopped before it was ready
                    pass
                else:
                    settings.enter_context(fewer_collections(freeze=True))
                    click.echo(f"asyncml serve: ready at {server.url}", err=True)

            async with asyncio.TaskGroup() as group:
                reporter = group.create_task(report_ready())
                await server.wait_stopped()
                reporter.cancel()
    if failures:
        raise failures[0]


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"asyncml serve: error: {one_line(message)}", err=True)
    raise click.exceptions.Exit(code)
