"""``kiq generate job NAME``: write a job module and its test, as ``rails generate job`` does.

``kiq generate job ProcessImageData --queue low_priority`` run at a project's
root writes ``app/jobs/process_image_data_job.py`` (class
``ProcessImageDataJob``) and ``tests/jobs/test_process_image_data_job.py``.
The name may be CamelCase or snake_case, with or without the ``Job`` suffix.

Where files go:

- the job in ``--path`` (default ``app/jobs``), a directory relative to the
  current one, which is taken as the project root: the test imports the job
  as the module that path names (``app.jobs.process_image_data_job``);
- the test in ``tests/`` plus ``--path`` without its first directory
  (``app/jobs`` -> ``tests/jobs``, ``shop/billing/jobs`` -> ``tests/billing/jobs``,
  ``jobs`` -> ``tests``);
- an ``__init__.py`` in each job directory the generator creates, so the job's
  package is a regular package that no same-named directory elsewhere on
  ``sys.path`` can shadow; directories that already exist are left as they
  are. Test directories get none: pytest imports test files by their own
  directory, and ``python -m pytest`` puts the project root on ``sys.path``.

An existing file is never overwritten without ``--force``: the command then
writes nothing and exits with code 1.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import click

DEFAULT_PATH = "app/jobs"
TESTS = "tests"

_WORD = re.compile(r"[A-Z][A-Z0-9]*(?![a-z])|[A-Z]?[a-z0-9]+|[A-Z]")
"""A word of a name: an acronym, digits included (HTML in HTMLParser, S3 in S3Upload, as Rails'
``underscore`` reads them), a capitalised or lower-case word, a lone capital."""


class GenerateError(Exception):
    """A name, path or option the generator cannot use; the message says why."""


@dataclass(frozen=True)
class JobName:
    """A job's names: ``ProcessImageDataJob`` in ``process_image_data_job.py``."""

    class_name: str
    module: str


def job_name(name: str) -> JobName:
    """Normalise ``ProcessImageData``, ``process_image_data`` or ``ProcessImageDataJob`` alike."""
    if not name.isascii() or not name.isidentifier() or keyword.iskeyword(name):
        raise GenerateError(f"{name!r} is not a valid job name: use a Python identifier such as "
                            "ProcessImageData or process_image_data")
    if name.startswith("_"):
        raise GenerateError(f"{name!r} is not a valid job name: it must not start with an underscore")
    words = [word for part in name.split("_") for word in _WORD.findall(part)]
    if words and words[-1].lower() == "job":
        words.pop()
    if not words:
        raise GenerateError(f"{name!r} is not a valid job name: it needs more than the Job suffix")
    if words[0][0].isdigit():
        raise GenerateError(f"{name!r} is not a valid job name: a class name cannot start with a digit")
    return JobName(
        class_name="".join(word[0].upper() + word[1:] for word in words) + "Job",
        module="_".join(word.lower() for word in words) + "_job",
    )


@dataclass(frozen=True)
class Plan:
    """What ``generate job`` writes, relative to the project root."""

    name: JobName
    queue: str | None
    job_dir: PurePosixPath
    test_dir: PurePosixPath

    @property
    def job_file(self) -> PurePosixPath:
        return self.job_dir / f"{self.name.module}.py"

    @property
    def test_file(self) -> PurePosixPath:
        return self.test_dir / f"test_{self.name.module}.py"

    @property
    def import_path(self) -> str:
        """The job's module as the test imports it."""
        return ".".join([*self.job_dir.parts, self.name.module])


def plan(name: str, path: str = DEFAULT_PATH, queue: str | None = None) -> Plan:
    """Check the name, path and queue, and say where each file goes."""
    job_dir = PurePosixPath(path.replace("\\", "/"))
    if job_dir.is_absolute() or ".." in job_dir.parts:
        raise GenerateError(f"--path {path!r} must be a directory inside the project (relative, no '..')")
    for part in job_dir.parts:
        if not part.isidentifier() or keyword.iskeyword(part):
            raise GenerateError(f"--path {path!r}: {part!r} is not a valid Python package name, "
                                "so the test could not import the job")
    if queue is not None and (not queue or not queue.isprintable() or any(c.isspace() for c in queue)):
        raise GenerateError(f"--queue {queue!r} is not a valid queue name: use letters, digits, '_' or '-'")
    test_dir = PurePosixPath(TESTS, *job_dir.parts[1:])
    return Plan(job_name(name), queue, job_dir, test_dir)


def render_job(plan: Plan) -> str:
    queue = f"    queue = {json.dumps(plan.queue)}\n\n" if plan.queue is not None else ""
    return f'''"""{plan.name.class_name}: TODO say what this job does."""

from __future__ import annotations

import kiq


class {plan.name.class_name}(kiq.Job):
{queue}    def perform(self, *args: object, **kwargs: object) -> None:
        """TODO: do the work. Arguments are what perform_later was called with."""
'''


def render_test(plan: Plan) -> str:
    job = plan.name.class_name
    queue = json.dumps(plan.queue if plan.queue is not None else "default")
    return f'''"""Tests for {job}."""

from __future__ import annotations

from kiq.testing import Jobs

from {plan.import_path} import {job}


def test_enqueues_with_its_arguments(kiq_jobs: Jobs) -> None:
    # TODO: the job's real arguments, here and below
    {job}.perform_later(42, size="large")

    kiq_jobs.assert_enqueued_with(
        job={job},
        args=[42],
        kwargs={{"size": "large"}},
        queue={queue},
    )


def test_performs(kiq_jobs: Jobs) -> None:
    {job}.perform_later(42, size="large")

    kiq_jobs.perform_enqueued_jobs()

    kiq_jobs.assert_no_enqueued_jobs()
    kiq_jobs.assert_performed_jobs(1, job={job})
    # TODO: assert what the job did
'''


def write(plan: Plan, root: Path, force: bool = False) -> list[tuple[str, PurePosixPath]]:
    """Write the job and its test under ``root``; returns (action, path) for each file written.

    Without ``force``, an existing file is a GenerateError and nothing is written.
    """
    files = {plan.job_file: render_job(plan), plan.test_file: render_test(plan)}
    other = _tested_elsewhere(root / plan.test_file, plan)
    if other:
        raise GenerateError(f"{plan.test_file} tests {other}, another job of this name (jobs in two "
                            "packages share the tests folder); nothing written: give this job "
                            "another name, or move that test")
    for relative in files:
        target = root / relative
        if target.is_dir():
            raise GenerateError(f"{relative} is a directory")
        if target.exists() and not force:
            existing = [str(path) for path in files if (root / path).exists()]
            verb = "exists" if len(existing) == 1 else "exist"
            raise GenerateError(f"{' and '.join(existing)} already {verb}; nothing written "
                                "(--force overwrites)")
    done: list[tuple[str, PurePosixPath]] = []
    created: set[PurePosixPath] = set()
    for directory in (plan.job_dir, plan.test_dir):
        for parent in reversed([directory, *directory.parents]):
            if parent != PurePosixPath(".") and not (root / parent).is_dir():
                (root / parent).mkdir()
                created.add(parent)
    for parent in sorted(created):
        if parent == plan.job_dir or parent in plan.job_dir.parents:
            init = parent / "__init__.py"
            (root / init).write_text("")
            done.append(("create", init))
    for relative, text in files.items():
        target = root / relative
        action = "force" if target.exists() else "create"
        target.write_text(text)
        done.append((action, relative))
    return done


def _tested_elsewhere(test: Path, plan: Plan) -> str:
    """The module of another job whose test is at ``test`` (one the generator wrote for a job of
    this name in another package), or "": --force must not overwrite it."""
    try:
        text = test.read_text()
    except (OSError, UnicodeDecodeError):
        return ""
    found = re.search(rf"^from ([\w.]+) import {plan.name.class_name}$", text, re.MULTILINE)
    return found[1] if found and found[1] != plan.import_path else ""


@click.group()
def generate() -> None:
    """Write new code from templates."""


@generate.command("job")
@click.argument("name")
@click.option("--queue", help="The job's queue (default: kiq's 'default').")
@click.option("--path", default=DEFAULT_PATH, show_default=True,
              help="Directory of the job module, relative to the project root (the current directory); "
                   "the test goes in tests/ plus this path without its first directory.")
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
def job(name: str, queue: str | None, path: str, force: bool) -> None:
    """Write a job module and its test: NAME is ProcessImageData, process_image_data or
    ProcessImageDataJob."""
    try:
        written = write(plan(name, path, queue), Path.cwd(), force)
    except GenerateError as error:
        click.echo(f"kiq: {error}", err=True)
        sys.exit(1)
    for action, relative in written:
        click.echo(f"{action:>8}  {relative}")
