"""Several gateway processes on one port: ``AIP_WORKERS=N``.

As in grpc's multiprocessing example, the workers are forked before any gRPC
object exists; each runs its own event loop and server with SO_REUSEPORT, and
the kernel spreads new connections over them. The parent only supervises: it
forwards SIGTERM/SIGINT to every worker, waits for their graceful shutdowns and
exits with the first non-zero code (0 when all stopped cleanly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Iterator

from server.app import AddressInUse, serve, warn_when_open
from server.metrics import multiprocess_directory, multiprocess_registry, serve_metrics, worker_exited
from server.services import check_providers
from server.settings import Settings

_LOGGER = logging.getLogger(__name__)


def run_workers(settings: Settings) -> int:
    """Fork ``settings.gateway.workers`` workers on one port, supervise them, return the exit code."""
    # A configuration error is one line from the parent, not N tracebacks.
    check_providers(settings)
    settings.gateway.server_credentials()
    host, _, port = settings.gateway.address.rpartition(":")
    with _reserved_port(host, int(port)) as bound_port, _summed_metrics(settings) as metrics_directory:
        address = f"{host}:{bound_port}"
        worker_settings = settings.model_copy(
            update={"gateway": settings.gateway.model_copy(update={"address": address})}
        )
        _LOGGER.info("starting %d workers on %s", settings.gateway.workers, address)
        warn_when_open(worker_settings)
        children = [_fork_worker(worker_settings, metrics_directory) for _ in range(settings.gateway.workers)]

        def forward(signum: int, _frame: object) -> None:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        exit_code = 0
        for pid in children:
            _, status = os.waitpid(pid, 0)
            if metrics_directory is not None:
                worker_exited(pid, metrics_directory)
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                _LOGGER.error("worker %d exited with %d", pid, code)
                exit_code = exit_code or (code if code > 0 else 1)
        _LOGGER.info("all workers stopped")
        return exit_code


@contextlib.contextmanager
def _summed_metrics(settings: Settings) -> Iterator[str | None]:
    """With AIP_METRICS_ADDRESS: the directory the workers write their metrics to, served summed here."""
    if not settings.gateway.metrics_address:
        yield None
        return
    with multiprocess_directory() as directory:
        serve_metrics(settings.gateway.metrics_address, multiprocess_registry(directory))
        yield directory


def _fork_worker(settings: Settings, metrics_directory: str | None) -> int:
    pid = os.fork()
    if pid:
        return pid
    # The child: a fresh event loop and server of its own; never returns.
    code = 0
    try:
        asyncio.run(serve(settings, share_port=True, metrics_directory=metrics_directory))
    except AddressInUse as error:
        _LOGGER.error("%s", error)
        code = 1
    except BaseException:
        _LOGGER.exception("worker failed")
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


@contextlib.contextmanager
def _reserved_port(host: str, port: int) -> Iterator[int]:
    """Check the port is free, then hold it (SO_REUSEPORT) for the workers while they run."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    bind_host = host.strip("[]")
    # A plain bind fails if anyone listens there, even a SO_REUSEPORT group: a second
    # gateway must not silently join another's port.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((bind_host, port))
        except OSError as error:
            raise AddressInUse(f"cannot listen on {host}:{port}: the address is in use or not available") from error
    with socket.socket(family, socket.SOCK_STREAM) as reservation:
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind((bind_host, port))
        yield reservation.getsockname()[1]
