"""Dask clusters for inference: connecting or starting one, and what each worker process keeps.

``--cluster tcp://HOST:PORT`` connects to a running scheduler (``dask scheduler``, its
workers started by ``dask worker``, ``dask-jobqueue`` on SLURM or ``dask-kubernetes``);
``--cluster local:N`` starts a :class:`distributed.LocalCluster` of ``N`` worker processes
of one thread each (one per GPU where there are GPUs, the CPU cores shared out otherwise).
Workers read inputs and write outputs themselves, so on a real cluster the files must be on
a file system every worker sees, and photongap installed there.

Each worker process loads a model once (:func:`cached_model`, keyed by the file's path,
size and modification time) and runs torch on its own device and share of the cores
(:class:`TorchSetup`, a worker plugin, so a worker that the nanny restarts gets it again).
This module is imported only when a cluster is asked for: plain commands never import Dask.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
from distributed import Client, LocalCluster, WorkerPlugin

import photongap
from photongap.errors import PhotongapError

_WORKER: dict[str, Any] = {"device": None, "models": {}, "loads": 0}
"""What a worker process keeps between tasks: its device and the models it has loaded."""


def parse_cluster(address: str) -> tuple[str, int | None]:
    """``("tcp", None)`` for a scheduler's address, ``("local", N)`` for ``local:N`` (``N`` None for ``local``).

    Examples
    --------
    >>> parse_cluster("local:2"), parse_cluster("tcp://10.0.0.5:8786")
    (('local', 2), ('tcp', None))
    """
    text = address.strip()
    if text == "local":
        return "local", None
    if text.startswith("local:"):
        count = text.removeprefix("local:")
        if not count.isdigit() or int(count) < 1:
            raise PhotongapError(f"--cluster {address}: local:N needs a number of workers N >= 1")
        return "local", int(count)
    if "://" in text and text.split("://", 1)[1]:
        return "tcp", None
    raise PhotongapError(f"--cluster {address}: give a scheduler address (tcp://HOST:PORT) or local:N to start N workers here")


class TorchSetup(WorkerPlugin):
    """Worker set-up: torch's threads and the worker's device, applied to every (re)started worker.

    Parameters
    ----------
    threads : int, optional
        Torch threads per task thread; by default the worker's cores over its task threads.
    gpus : int
        GPUs of a local cluster: worker ``k`` uses ``cuda:{k % gpus}``. 0 on a remote cluster,
        whose workers each see their own devices (``dask-cuda`` gives each one GPU).
    """

    name = "photongap-torch"
    idempotent = False  # a new cluster's set-up replaces an older one of the same name

    def __init__(self, threads: int | None = None, gpus: int = 0) -> None:
        self.threads, self.gpus = threads, gpus

    def setup(self, worker: Any) -> None:
        import torch

        threads = self.threads or max(1, (os.cpu_count() or 1) // max(1, worker.state.nthreads))
        torch.set_num_threads(threads)
        index = worker.name if isinstance(worker.name, int) else 0
        _WORKER["device"] = f"cuda:{index % self.gpus}" if self.gpus else None


def worker_device(requested: str) -> str:
    """The device a task runs on: the worker's own GPU for ``auto``/``cuda`` on a local GPU cluster, else ``requested``."""
    own = _WORKER["device"]
    return own if own is not None and requested in ("auto", "cuda") else requested


def cached_model(path: str | Path) -> photongap.GapModel:
    """The model at ``path``, loaded once per worker process (again only if the file changes)."""
    from photongap.model import GapModel

    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    models = _WORKER["models"]
    if key not in models:
        models.clear()  # one model at a time: a changed file replaces the old weights
        models[key] = GapModel.load(path)
        _WORKER["loads"] += 1
    return models[key]


def model_loads() -> int:
    """How many times this process has loaded a model (``client.run(model_loads)`` asks every worker)."""
    return _WORKER["loads"]


def _photongap_version() -> str:
    return photongap.__version__


def one_line(error: BaseException) -> str:
    """An error as users see it: a :class:`PhotongapError`'s message, else its type and first line."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, PhotongapError):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _fast_worker_start() -> contextlib.AbstractContextManager:
    """Start local workers by forking a server that has already imported torch and photongap, where possible.

    Spawned workers each import torch, Dask and photongap again: on a loaded 2-core machine
    that was 36-40 s for a cluster of two, against 25 s forked from a preloaded server.
    """
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return contextlib.nullcontext()
    settings = dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
    from distributed.utils import get_mp_context

    get_mp_context().set_forkserver_preload(["distributed", "torch", "photongap.cluster", "photongap.model", "photongap.pipeline"])
    return settings


def _local_cluster(workers: int | None, device: str) -> LocalCluster:
    import torch

    gpus = torch.cuda.device_count() if device in ("auto", "cuda") and torch.cuda.is_available() else 0
    workers = workers or gpus or (os.cpu_count() or 1)
    threads = 1 if gpus else max(1, (os.cpu_count() or 1) // workers)
    # No dashboard: several runs (or users) on one machine would fight over its port. Failed tasks
    # are reported by the run, one line each: the workers' own tracebacks would only repeat them.
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.CRITICAL)
    cluster.photongap_setup = TorchSetup(threads=threads, gpus=gpus)  # type: ignore[attr-defined]
    return cluster


@contextlib.contextmanager
def open_cluster(address: str, device: str = "auto", *, timeout: float | None = None) -> Iterator[Client]:
    """A :class:`distributed.Client` for ``--cluster ADDRESS``; a local cluster is shut down afterwards.

    Parameters
    ----------
    address : str
        ``tcp://HOST:PORT`` (any address Dask takes) or ``local:N``.
    device : str
        The device asked for: decides how many local workers there are and which GPU each has.
    timeout : float, optional
        Seconds to wait for the scheduler and its first worker (default: Dask's
        ``distributed.comm.timeouts.connect``, 30 s unless configured).

    Raises
    ------
    PhotongapError
        One line when the scheduler cannot be reached, has no workers, or its workers run
        another photongap (or none).
    """
    kind, workers = parse_cluster(address)
    if timeout is None:
        timeout = float(dask.utils.parse_timedelta(dask.config.get("distributed.comm.timeouts.connect")))
    with contextlib.ExitStack() as stack:
        if kind == "local":
            stack.enter_context(_fast_worker_start())  # for the whole run: the nanny restarts dead workers the same way
            cluster = stack.enter_context(_local_cluster(workers, device))
            client, setup = stack.enter_context(Client(cluster)), cluster.photongap_setup
        else:
            try:
                client = stack.enter_context(Client(address, timeout=timeout))
            except (OSError, TimeoutError, ValueError) as error:
                raise PhotongapError(f"--cluster {address}: cannot reach a Dask scheduler there ({one_line(error)})") from None
            try:
                client.wait_for_workers(1, timeout=timeout)
            except (OSError, TimeoutError):
                raise PhotongapError(f"--cluster {address}: the scheduler has no workers (start some with: dask worker {address})") from None
            setup = TorchSetup()
        try:
            versions = set(client.run(_photongap_version).values())
        except ImportError:
            raise PhotongapError(f"--cluster {address}: photongap is not installed on the workers") from None
        if versions != {photongap.__version__}:
            raise PhotongapError(f"--cluster {address}: the workers run photongap {', '.join(sorted(versions))}, this is {photongap.__version__}")
        client.register_plugin(setup)
        yield client
