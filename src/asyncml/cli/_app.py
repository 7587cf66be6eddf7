"""The ``asyncml`` command group; each subcommand lives in its own module and is added here."""

from __future__ import annotations

from importlib.metadata import version

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(version("asyncml"), prog_name="asyncml")
def main() -> None:
    """Use machine-learning models concurrently: batch jobs over files and HTTP serving.

    \b
    Exit codes:
      0  success
      1  the job ran but stopped on failures (see the message)
      2  bad usage or input: a wrong option, a missing file, a REF that does not import
    """


from . import run  # noqa: E402, F401 - registers "asyncml run"
from . import serve as serve  # noqa: E402 - registers "asyncml serve"
