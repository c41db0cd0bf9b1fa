"""Checks of the command-line values that need nothing loaded: run before anything else, so a bad
value is one line and exit 2 before Ray starts or anything is written.

The numeric options are a pydantic model (ranges and finiteness declared once, as field
constraints); ``--output``, the tracking URI and ``--address`` are checked against the machine
without writing anything: the nearest existing folder of ``--output`` must be a writable directory
on a read-write filesystem, a sqlite store must be a file, and a cluster address must accept a TCP
connection within :data:`CONNECT_TIMEOUT_S` (``ray.init`` on a dead address waits for minutes).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from search.cli import UsageError

CONNECT_TIMEOUT_S = 5.0
#: Ray's default ports: the GCS of ``ray start --head`` and the Ray Client server.
GCS_PORT, CLIENT_PORT = 6379, 10001


class CliValues(BaseModel):
    """The numeric and naming options of ``python -m search.run``, with their ranges."""

    model_config = ConfigDict(extra="forbid")

    seed: Optional[int] = Field(None, ge=0)
    num_samples: Optional[int] = Field(None, ge=1)
    max_concurrent_trials: Optional[int] = Field(None, ge=1)
    workers_per_trial: int = Field(1, ge=1)
    gpus_per_worker: float = Field(0.0, ge=0, allow_inf_nan=False)
    cpus_per_worker: Optional[float] = Field(None, gt=0, allow_inf_nan=False)
    max_failures: int = Field(0, ge=0)
    # MLflow needs a non-empty name; control characters would break its UI and one-line logs
    experiment: str = Field("robust-ft-search", min_length=1, max_length=250,
                            pattern=r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$")


#: What to do about each option's bad value (the pydantic message says what is wrong).
_FIX = {
    "seed": "use a seed >= 0, e.g. --seed 0",
    "num_samples": "use --num-samples 1 or more (omit it to use the space's)",
    "max_concurrent_trials": "use --max-concurrent-trials 1 or more (omit it for the space's)",
    "workers_per_trial": "use --workers-per-trial 1 or more",
    "gpus_per_worker": "use a finite --gpus-per-worker >= 0 (0 trains on CPU)",
    "cpus_per_worker": "use a finite --cpus-per-worker > 0 (omit it for the default)",
    "max_failures": "use --max-failures 0 (no retry) or more",
    "experiment": "pass a non-empty --experiment name without control characters",
}


def check_values(args: Any) -> None:
    """Raise UsageError (one line) for the first option outside its range."""
    values = {name: getattr(args, name) for name in CliValues.model_fields}
    try:
        CliValues(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0])
        problem = ("must hold a visible character and no control characters"
                   if first["type"] == "string_pattern_mismatch" else
                   first["msg"][0].lower() + first["msg"][1:])
        raise UsageError(f"--{name.replace('_', '-')} {values[name]!r}: {problem}; "
                         f"fix: {_FIX[name]}") from None


def _read_only(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def check_output(output: Path) -> None:
    """``--output`` must be (or be creatable as) a writable directory; nothing is written."""
    path = output.expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output {output} is a file, not a directory; fix: choose a directory "
                         "path (it is created if missing)")
    anchor = path
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        raise UsageError(f"--output {output} is below {anchor}, which is a file; fix: choose a "
                         "path under a directory")
    if _read_only(anchor) or not os.access(anchor, os.W_OK | os.X_OK):
        raise UsageError(f"--output {output}: {anchor} is not writable (read-only filesystem "
                         "or permissions); fix: choose an --output you can write to")


def check_sqlite_uri(uri: str) -> None:
    """A sqlite tracking URI must name a database file whose folder can be created."""
    from search.tracking.recorder import TrackingError

    if not uri.startswith("sqlite"):
        return
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
    fix = "pass --tracking-uri sqlite:///PATH/mlflow.db (or a running server's http URL)"
    if not path or path.startswith(":memory:") or "mode=memory" in path:
        raise TrackingError(f"tracking URI {uri} is not a persistent store (an in-memory "
                            f"database is lost when the run ends); fix: {fix}")
    folder = Path(path.partition("?")[0]).expanduser().absolute().parent
    anchor = folder
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir() or _read_only(anchor) or not os.access(anchor, os.W_OK):
        raise TrackingError(f"tracking URI {uri}: {anchor} is not a writable directory; "
                            f"fix: {fix}")


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``--address`` value; None for ``auto`` with no cluster to be found."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
        if not address:
            current = Path("/tmp/ray/ray_current_cluster")
            address = current.read_text().strip() if current.is_file() else ""
        if not address:
            return None
    port = GCS_PORT
    if address.startswith("ray://"):
        address, port = address[len("ray://"):], CLIENT_PORT
    host, sep, port_text = address.rpartition(":")
    if not sep:
        return address, port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"--address {address!r}: the port is not a number in 1-65535; fix: "
                         "pass HOST:PORT, e.g. --address 127.0.0.1:6379")
    return host.strip("[]"), int(port_text)


def check_address(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A cluster address must accept a TCP connection within ``timeout`` seconds."""
    if not address or address == "local":
        return
    target = _host_port(address)
    if target is None:
        raise UsageError("--address auto: no running Ray cluster found on this machine (no "
                         "RAY_ADDRESS, no /tmp/ray/ray_current_cluster); fix: start one with "
                         "'ray start --head' or pass its HOST:PORT")
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UsageError(f"--address {address}: nothing answers at {target[0]}:{target[1]} "
                         f"within {timeout:g} s ({reason}); fix: start the cluster (ray start "
                         "--head) or correct the address") from None


def check_args(args: Any) -> None:
    """Every check of this module, in the order a user would fix them."""
    check_values(args)
    check_output(args.output)
    if args.tracking_uri:
        check_sqlite_uri(args.tracking_uri)
    check_address(args.address)
