"""Running jobs on a Dask cluster: tasks as they finish, follow-up stages, failures kept per job.

A job is one input file. It submits its first tasks, is told of each one that finishes (and
may then submit more: a tiled image's second pass waits for the first one's normalisers), and
is closed when it is complete or has failed. A failed task fails its job only: its one-line
error is kept, the job's other tasks are cancelled and its partial output removed, and the
other jobs carry on. Tasks of a worker that dies are rerun by Dask on the others, so every
task must be idempotent: it writes the same bytes to the same place whenever it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from distributed import Client, Future, as_completed

from photongap.cluster.setup import one_line


class ClusterJob(Protocol):
    """What :func:`run_jobs` needs of a job."""

    name: str
    """How messages name it: the input file."""
    tasks: int
    """Tasks it will run in all stages (for the progress bar)."""

    def start(self, client: Client) -> list[Future]:
        """Submit the first tasks (``pure=False``: each submission runs)."""

    def finished(self, client: Client, future: Future) -> list[Future]:
        """Take one finished task's result (``future.result()`` raises its error); return follow-up tasks."""

    @property
    def complete(self) -> bool:
        """Whether every task has finished."""

    def close(self, error: BaseException | None) -> list[Path]:
        """Finish (``error`` None: rename outputs into place, return them) or clean up after a failure."""


@dataclass
class ClusterResult:
    """What a run on a cluster did: outputs written, failures (``"PATH: error"``), notes of finished jobs."""

    written: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_jobs(client: Client, jobs: Sequence[ClusterJob], progress: Callable[[int, int], None] | None = None) -> ClusterResult:
    """Run ``jobs`` on the cluster of ``client``; ``progress(tasks_done, tasks_in_all)`` follows them.

    Returns the outputs of the jobs that completed and the one-line errors of those that
    failed; a failed job leaves no output under its final name. An interruption (Ctrl-C)
    cancels every task and removes every unfinished output before it is raised again.
    """
    result = ClusterResult()
    owner: dict[str, ClusterJob] = {}
    pending: dict[int, set[Future]] = {id(job): set() for job in jobs}
    queue = as_completed()
    open_jobs = set()
    written: dict[int, list[Path]] = {}

    def submit(job: ClusterJob, futures: list[Future]) -> None:
        for future in futures:
            owner[future.key] = job
            pending[id(job)].add(future)
            queue.add(future)

    def fail(job: ClusterJob, error: BaseException) -> None:
        message = one_line(error)
        result.failures.append(message if message.startswith(f"{job.name}:") else f"{job.name}: {message}")
        open_jobs.discard(id(job))
        client.cancel(list(pending[id(job)]))
        pending[id(job)].clear()
        try:
            job.close(error)
        except Exception as cleanup:  # the first error is the one to report
            result.notes.append(f"{job.name}: cleaning up after the failure also failed ({one_line(cleanup)})")

    try:
        for job in jobs:
            open_jobs.add(id(job))
            try:
                submit(job, job.start(client))
            except Exception as error:
                fail(job, error)
        total, done = sum(job.tasks for job in jobs), 0
        if progress is not None:
            progress(done, total)
        for future in queue:
            job = owner.pop(future.key)
            pending[id(job)].discard(future)
            if id(job) not in open_jobs:
                continue  # a task of a job that has already failed
            done += 1
            if progress is not None:
                progress(done, total)
            try:
                submit(job, job.finished(client, future))
                if job.complete:
                    open_jobs.discard(id(job))
                    written[id(job)] = job.close(None)
                    result.notes += getattr(job, "notes", [])
            except Exception as error:
                fail(job, error)
    except BaseException as error:
        client.cancel([future for futures in pending.values() for future in futures])
        for job in jobs:
            if id(job) in open_jobs:
                job.close(error)
        raise
    result.written = [path for job in jobs for path in written.get(id(job), [])]
    return result

