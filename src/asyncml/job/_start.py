"""Starting a job: checking its paths, and deciding from the journal whether it starts
afresh, resumes, or is refused. Everything here blocks: it runs in a thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..io import Format, format_of
from ._crash import CrashPoints
from ._errors import InputError, OutputError, ResumeError
from ._fingerprint import differences, fingerprint
from ._journal import Commit, Journal, remove_journal
from ._output import CommittedOutput, StreamedOutput
from ._parts import FolderLocked, PartStore

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
        InputError: a missing or unreadable input, or an unknown input format.
        OutputError: an unknown output format, a missing folder, or two of the job's files
            (input, output, dead letters, journal) that are one.
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
    if paths.input != STREAM:
        try:
            with open(paths.input, "rb"):
                pass
        except OSError as error:
            raise InputError(f"cannot read {paths.input!r}: {error.strerror}") from None
    _check_side_file(paths.dead_letters, "dead-letter file")
    if paths.journal is not None:
        _check_side_file(paths.journal, "journal")
    _check_distinct(paths)
    return input_format, output_format


def _check_side_file(path: Path, role: str) -> None:
    """A dead-letter file or journal must be creatable: checked before any work is done."""
    if path.is_dir():
        raise OutputError(f"the {role} {str(path)!r} is a folder")
    if not path.parent.is_dir():
        raise OutputError(
            f"cannot write the {role} {str(path)!r}: folder {str(path.parent)!r} does not exist"
        )


def _check_distinct(paths: JobPaths) -> None:
    """No file of the job may be another: the job would overwrite or delete it."""
    files = [("input", paths.input), ("output", paths.output)]
    files = [(role, path) for role, path in files if path != STREAM]
    files.append(("dead-letter file", str(paths.dead_letters)))
    if paths.journal is not None:
        files.append(("journal", str(paths.journal)))
    seen: dict[Path, str] = {}
    for role, path in files:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise OutputError(f"the {role} {path!r} is also the job's {seen[resolved]}")
        seen[resolved] = role


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

    With ``resume`` and no journal, the job starts afresh (one command both starts a job
    and continues it). A parts folder that holds parts while there is no journal belongs
    to a job whose journal is kept elsewhere: without ``force``, it is left alone and the
    run refused.

    Raises:
        ResumeError: a journal exists without ``resume`` or ``force`` (also for a run that
            cannot journal: it would delete the unfinished job's parts), records another
            job, or lists missing parts; ``resume`` of a job that reads stdin or writes
            stdout; parts but no journal.
        OutputError: the parts folder or the journal cannot be written, or another run
            of the job holds them.
    """
    streamed = STREAM in (paths.input, paths.output)
    if resume and streamed:
        raise ResumeError("a job that reads stdin or writes stdout cannot be resumed")
    if paths.output == STREAM:
        return Started(
            StreamedOutput(stream=None, dead_letters=paths.dead_letters, id_name=id_name), 0, 0
        )
    journaled = use_journal and not streamed
    facts: dict[str, Any] = {}
    if journaled:
        facts["fingerprint"] = fingerprint(
            model_ref=model_ref,
            code_hash=code_hash,
            input_path=Path(paths.input).resolve(),
            output_path=Path(paths.output).resolve(),
            field=field,
            id_field=id_field,
        )
    parts = _part_store(paths, durable=use_journal)
    new_output = partial(_output, paths, output_format, id_name, parts, crash=crash)
    try:
        return _open(paths, parts, resume, force, journaled, facts, new_output)
    except BaseException:
        parts.close()
        raise


def _part_store(paths: JobPaths, *, durable: bool) -> PartStore:
    try:
        return PartStore(paths.parts, durable=durable)
    except FolderLocked:
        raise OutputError(
            f"another run of this job is writing {paths.output!r} (it holds "
            f"{str(paths.parts)!r}): let it finish, or stop it and --resume"
        ) from None
    except OSError as error:
        raise OutputError(f"cannot write next to {paths.output!r}: {error.strerror}") from None


def _open(
    paths: JobPaths,
    parts: PartStore,
    resume: bool,
    force: bool,
    use_journal: bool,
    facts: dict[str, Any],
    new_output: Callable[[Journal | None, list[Commit]], CommittedOutput],
) -> Started:
    """The job's output, its journal opened, checked, begun or resumed."""
    journal_path = paths.journal
    assert journal_path is not None  # the output is a file
    existed = journal_path.exists()
    if existed and force:
        remove_journal(journal_path)
        existed = False
    if not existed and not force and any(parts.folder.iterdir()):
        # Parts of a job whose journal is kept elsewhere (--journal): never this run's to
        # delete, nor to resume from.
        raise ResumeError(
            f"cannot {'resume' if resume else 'start'}: {str(parts.folder)!r} holds parts, "
            f"but there is no journal at {str(journal_path)!r}; give the job's --journal, "
            "or use --force to discard them"
        )
    if not use_journal:
        if existed:
            raise ResumeError(
                f"{str(journal_path)!r} holds an unfinished job, which this run (without a "
                "journal) would overwrite: --resume it, or use --force to discard it"
            )
        parts.discard_unlisted(set())
        return Started(new_output(None, []), 0, 0)
    journal = _open_journal(journal_path)
    try:
        if existed and journal.get("done"):
            if resume and not differences(journal.get("fingerprint"), facts["fingerprint"]):
                commits = journal.commits()
                return Started(new_output(journal, commits), *_resume_point(commits), done=True)
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
    return Started(new_output(journal, commits), *_resume_point(commits))


def _resume_point(commits: list[Commit]) -> tuple[int, int]:
    """The rows done and the input position where the last commit ends."""
    last = commits[-1] if commits else None
    return (last.next_row, last.position) if last else (0, 0)


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


def _output(
    paths: JobPaths,
    output_format: Format,
    id_name: str,
    parts: PartStore,
    journal: Journal | None,
    commits: list[Commit],
    *,
    crash: CrashPoints,
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
