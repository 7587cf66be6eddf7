"""Starting a job: checking its paths, and deciding from the journal whether it starts
afresh, resumes, or is refused. Everything here blocks: it runs in a thread."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..io import Format, format_of
from ._crash import CrashPoints
from ._errors import InputError, OutputError, ResumeError
from ._fingerprint import differences, fingerprint
from ._journal import Commit, Journal, remove_journal
from ._output import CommittedOutput, StreamedOutput
from ._parts import PartStore

STREAM = "-"


@dataclass(frozen=True)
class JobPaths:
    """Where a job reads and writes; ``"-"`` is stdin or stdout."""

    input: str
    output: str
    dead_letters: Path
    journal: Path | None

    @classmethod
    def of(
        cls,
        input_path: str | Path,
        output_path: str | Path,
        *,
        dead_letters: str | Path | None,
        journal: str | Path | None,
    ) -> JobPaths:
        """Fills in the defaults: dead letters and journal next to the output."""
        output = str(output_path)
        base = "asyncml-output" if output == STREAM else output
        return cls(
            input=str(input_path),
            output=output,
            dead_letters=Path(dead_letters or f"{base}.dead.jsonl"),
            journal=Path(journal or f"{base}.journal.sqlite") if output != STREAM else None,
        )

    @property
    def parts(self) -> Path:
        """The folder of the output's part files."""
        return Path(f"{self.output}.parts")


@dataclass
class Started:
    """A job ready to run: its output, and where in the input it goes on."""

    output: CommittedOutput | StreamedOutput
    resumed_rows: int
    position: int
    #: The job had already finished: only its clean-up was left.
    done: bool = False


def check_paths(paths: JobPaths) -> tuple[Format, Format]:
    """The input and output formats, after checking both paths.

    Raises:
        InputError: a missing input, or an unknown input format.
        OutputError: an unknown output format, a missing folder, or the input itself.
    """
    if paths.input != STREAM and not Path(paths.input).is_file():
        what = "is a folder" if Path(paths.input).is_dir() else "does not exist"
        raise InputError(f"input file {paths.input!r} {what}")
    try:
        input_format = format_of(paths.input)
    except ValueError as error:
        raise InputError(f"input {error}") from None
    try:
        output_format = format_of(paths.output)
    except ValueError as error:
        raise OutputError(f"output {error}") from None
    if paths.output != STREAM:
        output = Path(paths.output)
        if output.is_dir():
            raise OutputError(f"output {paths.output!r} is a folder")
        if not output.parent.is_dir():
            raise OutputError(
                f"cannot write {paths.output!r}: folder {str(output.parent)!r} does not exist"
            )
        if paths.input != STREAM and output.resolve() == Path(paths.input).resolve():
            raise OutputError(f"output {paths.output!r} is the input file")
    return input_format, output_format


def start(
    paths: JobPaths,
    *,
    output_format: Format,
    id_name: str,
    model_ref: str,
    code_hash: str,
    field: str | None,
    id_field: str | None,
    resume: bool,
    force: bool,
    use_journal: bool,
    crash: CrashPoints,
) -> Started:
    """Opens the job's output and journal, resuming or starting afresh.

    Raises:
        ResumeError: a journal exists without ``resume`` or ``force``, records another
            job, or lists missing parts; or ``resume`` where nothing can be resumed.
        OutputError: the parts folder or the journal cannot be written.
    """
    streamed = STREAM in (paths.input, paths.output)
    if resume and streamed:
        raise ResumeError("a job that reads stdin or writes stdout cannot be resumed")
    if paths.output == STREAM:
        return Started(
            StreamedOutput(stream=None, dead_letters=paths.dead_letters, id_name=id_name), 0, 0
        )
    output = Path(paths.output)
    try:
        parts = PartStore(paths.parts, durable=use_journal)
    except OSError as error:
        raise OutputError(f"cannot write next to {paths.output!r}: {error.strerror}") from None
    if not use_journal or paths.journal is None or streamed:
        parts.discard_unlisted(set())
        return Started(_output(paths, output_format, id_name, parts, None, crash, []), 0, 0)
    facts = {
        "fingerprint": fingerprint(
            model_ref=model_ref,
            code_hash=code_hash,
            input_path=Path(paths.input).resolve(),
            output_path=output.resolve(),
            field=field,
            id_field=id_field,
        )
    }
    existed = paths.journal.exists()
    if existed and force:
        remove_journal(paths.journal)
        existed = False
    journal = _open_journal(paths.journal)
    try:
        if existed and journal.get("done"):
            if resume and not differences(journal.get("fingerprint"), facts["fingerprint"]):
                return _finished(paths, output_format, id_name, parts, journal, crash)
            existed = False  # a finished job whose clean-up was cut short: start afresh
        if existed and journal.last() is None:
            existed = False  # stopped before its first commit: nothing to resume
        if existed:
            commits = _resumable(paths, journal, facts["fingerprint"], resume, parts)
        else:
            parts.discard_unlisted(set())
            journal.begin(facts)
            commits = []
    except BaseException:
        journal.close()
        raise
    last = commits[-1] if commits else None
    out = _output(paths, output_format, id_name, parts, journal, crash, commits)
    return Started(out, last.next_row if last else 0, last.position if last else 0)


def _open_journal(path: Path) -> Journal:
    try:
        return Journal(path)
    except (OSError, sqlite3.Error) as error:
        raise OutputError(f"cannot open the journal {str(path)!r}: {error}") from None


def _resumable(
    paths: JobPaths, journal: Journal, current: dict[str, object], resume: bool, parts: PartStore
) -> list[Commit]:
    if not resume:
        raise ResumeError(
            f"{str(paths.journal)!r} holds an unfinished job: add --resume to continue it, "
            "or --force to start over"
        )
    changed = differences(journal.get("fingerprint"), current)
    if changed:
        raise ResumeError(
            f"cannot resume: the journal {str(paths.journal)!r} records another job "
            f"(changed: {', '.join(changed)}); use --force to start over"
        )
    commits = journal.commits()
    listed = {name for c in commits for name in (c.part, c.dead_part) if name}
    missing = sorted(name for name in listed if not (parts.folder / name).is_file())
    if missing:
        raise ResumeError(
            f"cannot resume: part {missing[0]!r} listed in the journal is missing from "
            f"{str(parts.folder)!r}; use --force to start over"
        )
    parts.discard_unlisted(listed)  # leftovers of a commit cut short
    return commits


def _finished(
    paths: JobPaths,
    output_format: Format,
    id_name: str,
    parts: PartStore,
    journal: Journal,
    crash: CrashPoints,
) -> Started:
    commits = journal.commits()
    out = _output(paths, output_format, id_name, parts, journal, crash, commits)
    last = commits[-1] if commits else None
    return Started(out, last.next_row if last else 0, last.position if last else 0, done=True)


def _output(
    paths: JobPaths,
    output_format: Format,
    id_name: str,
    parts: PartStore,
    journal: Journal | None,
    crash: CrashPoints,
    commits: list[Commit],
) -> CommittedOutput:
    return CommittedOutput(
        output=Path(paths.output),
        output_format=output_format,
        dead_letters=paths.dead_letters,
        id_name=id_name,
        parts=parts,
        journal=journal,
        crash=crash,
        committed=commits,
    )
