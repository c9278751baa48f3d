"""Warm start for the stage commands DVC runs: one pre-imported Python forks every stage.

Why: `dvc repro` starts one ``transferlab`` process per stage (17 by default), and each spent 8-12 s
importing torch, Lightning, torchmetrics and MLflow and ~2 s tearing the interpreter down, a third
of the default pipeline's wall time and most of the tiny test pipeline's. A stage run under DVC
(``DVC_STAGE`` is set) instead asks a server that imported all of that once to ``fork()`` a child
that runs the same command line: same argv, cwd, environment, umask, and the caller's own
stdin/stdout/stderr (passed over the socket), so output, exit status and outputs are the same as
a cold run's. This is the zygote/fork-server pattern; :mod:`multiprocessing`'s forkserver only
serves its own parent process, not separate commands, so it is written here.

- Scope: only stage commands (data, pretrain, ...) started by DVC. ``transferlab`` typed by hand,
  the tests' direct calls and ``params``/``validate`` run cold. ``TRANSFERLAB_WARM=0`` turns it off.
- One server per code version and environment: the socket's name is a hash of the interpreter,
  the installed packages (site-packages' listing), every ``transferlab`` source file's mtime and
  size, and the environment variables that take effect at import time. Editing the code therefore
  starts a fresh server; the old one exits after ``TRANSFERLAB_WARM_IDLE`` seconds (default 60)
  without a request.
- The server never runs a tensor op: GNU OpenMP breaks in a child forked after its parent used a
  thread team, so the child must be the first to use one.
- The caller stays the process DVC waits on: it forwards SIGINT/SIGTERM/SIGHUP to the child's
  process group and exits with the child's status (dying of the same signal when it was killed).
  If the caller itself dies (SIGKILL), the server kills the child: no stage outlives its command.
- The first stage finds no server: it starts one in the background and runs cold meanwhile;
  later stages wait for a server that is still importing. Anything else that fails before the
  child is forked falls back to running cold in the caller, with one line on stderr.

Sockets and logs live in ``$TRANSFERLAB_WARM_DIR`` (default ``$XDG_RUNTIME_DIR`` or the temp
directory, ``transferlab-warm-<uid>``, mode 0700). :func:`stop` stops a server once its running
stages end.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import transferlab
from transferlab.config import STAGES
from transferlab.process import in_child, mark_child, pipeline_id

#: Environment variables read when the modules are imported: they belong in the server's key.
IMPORT_TIME_ENV = (
    "PYTHONPATH",
    "PYTHONHASHSEED",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "MPLBACKEND",
)
#: What the server imports before it forks anything: the union of what the stages import.
PRELOAD = (
    "torch",
    "numpy",
    "lightning.pytorch",
    "torchmetrics",
    "mlflow",
    "mlflow.tracking",
    "mlflow.store.tracking.sqlalchemy_store",
    "transferlab.stages.data",
    "transferlab.stages.pretrain",
    "transferlab.stages.finetune",
    "transferlab.stages.evaluate",
    "transferlab.stages.shift",
    "transferlab.stages.curves",
    "transferlab.stages.summary",
    "transferlab.routes.image",
    "transferlab.routes.text",
    "transferlab.runtime",
    "transferlab.pool",
    "transferlab.tracking",
    "transferlab.resume",
    "transferlab.plots",
)
OFF = ("0", "false", "no", "off")
_MAX_MSG = 1 << 20
#: The argument that makes ``python -m transferlab.cli`` a warm-start server.
SERVE_FLAG = "--warm-serve"
#: A stage command: ``run(argv) -> exit code``, then ``finish()`` before the child exits.
Run = Callable[[list[str]], int]


def enabled(argv: list[str]) -> bool:
    """Serve ``argv`` warm: a stage command run by DVC, unless ``TRANSFERLAB_WARM=0``."""
    return (
        not in_child()
        and os.environ.get("TRANSFERLAB_WARM", "1").strip().lower() not in OFF
        and "DVC_STAGE" in os.environ
        and bool(argv)
        and argv[0] in STAGES
        and hasattr(os, "fork")
        and hasattr(socket, "send_fds")
    )


def runtime_dir() -> Path:
    base = os.environ.get("TRANSFERLAB_WARM_DIR") or str(
        Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
        / f"transferlab-warm-{os.getuid()}"
    )
    path = Path(base)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user")
    return path


def fingerprint(package_dir: Path | None = None, env: dict[str, str] | None = None) -> str:
    """What a server's imported state depends on: a new value means a new server."""
    if package_dir is None:
        package_dir = Path(transferlab.__file__).parent
    env = os.environ if env is None else env
    h = hashlib.sha256()
    h.update(f"{sys.executable}\0{sys.version}\0{os.getuid()}\0".encode())
    for entry in sys.path:  # installing or removing a package changes its directory's listing
        with contextlib.suppress(OSError):
            h.update(f"{entry}\0{os.stat(entry or '.').st_mtime_ns}\0".encode())
    for f in sorted(package_dir.rglob("*.py")):
        st = f.stat()
        h.update(f"{f.relative_to(package_dir)}\0{st.st_mtime_ns}\0{st.st_size}\0".encode())
    for var in IMPORT_TIME_ENV:
        h.update(f"{var}={env.get(var)}\0".encode())
    return h.hexdigest()[:20]


def socket_path(key: str | None = None) -> Path:
    return runtime_dir() / f"{key or fingerprint()}.sock"


# ------------------------------------------------------------------------------ messages
def _send(conn: socket.socket, msg: dict[str, Any]) -> None:
    data = json.dumps(msg).encode()
    conn.sendall(len(data).to_bytes(4, "big") + data)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _recv(conn: socket.socket) -> dict[str, Any] | None:
    head = _recv_exact(conn, 4)
    if head is None:
        return None
    size = int.from_bytes(head, "big")
    if size > _MAX_MSG:
        raise ValueError(f"warm-start message of {size} bytes")
    body = _recv_exact(conn, size)
    return None if body is None else json.loads(body)


# ------------------------------------------------------------------------------ the caller
def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        return conn
    except OSError:
        conn.close()
        return None


def _signal_server(path: Path, signum: int) -> bool:
    """Send ``signum`` to the server of ``path`` (0: only check); False if none is running."""
    try:
        os.kill(int(path.with_suffix(".pid").read_text()), signum)
        return True
    except (OSError, ValueError):
        return False


def _alive(path: Path) -> bool:
    """A server for ``path`` is running (importing, or serving)."""
    return _signal_server(path, 0)


def _server(path: Path, timeout: float = 180.0) -> socket.socket | None:
    """A connection to the server at ``path``, or ``None``: then no server is ready yet, one has
    been started in the background, and the caller runs its stage cold meanwhile (on 2 cores the
    server's imports and a light first stage, the data stage, overlap)."""
    if (conn := _connect(path)) is not None:
        return conn
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time
        if not _alive(path):
            env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
            with open(path.with_suffix(".log"), "ab") as log:
                proc = subprocess.Popen(
                    # -P, cwd: no project directory on sys.path; the child chdirs to the caller's
                    [sys.executable, "-P", "-m", "transferlab.cli", SERVE_FLAG, str(path)],
                    cwd=path.parent,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=env,
                    start_new_session=True,  # not in the terminal's group: Ctrl-C is forwarded
                    close_fds=True,
                )
            path.with_suffix(".pid").write_text(f"{proc.pid}\n")
            return None
    deadline = time.monotonic() + timeout  # it is importing: waiting beats importing twice
    while time.monotonic() < deadline and _alive(path):
        if (conn := _connect(path)) is not None:
            return conn
        time.sleep(0.05)
    return None


def run_warm(argv: list[str]) -> int | None:
    """Run ``transferlab argv`` in a child of the warm server; ``None`` if it could not be
    started there (nothing has run yet: the caller runs it cold)."""
    try:
        path = socket_path()
        conn = _server(path)
        if conn is None:
            return None
        with conn:
            sys.stdout.flush()
            sys.stderr.flush()
            # the child's ancestors are the server's, not this `dvc repro`: name the pipeline here
            env = {**os.environ, "TRANSFERLAB_PIPELINE_ID": pipeline_id()}
            request = {
                "argv": ["transferlab", *argv],
                "cwd": os.getcwd(),
                "env": env,
                "umask": _umask(),
            }
            data = json.dumps(request).encode()
            socket.send_fds(conn, [len(data).to_bytes(4, "big")], [0, 1, 2])
            conn.sendall(data)
            started = _recv(conn)
            if not started or "pid" not in started:
                raise OSError(f"the warm-start server did not start the stage: {started}")
            return _wait(conn, int(started["pid"]))
    except OSError as exc:
        print(f"transferlab: warm start unavailable ({exc}); running cold", file=sys.stderr)
        return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _wait(conn: socket.socket, pid: int) -> int:
    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, forward) for s in sigs}
    try:
        done = _recv(conn)  # a forwarded signal does not end the wait (PEP 475 retries recv)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if done is None or "exit" not in done:
        print("transferlab: the warm-start server went away during the stage", file=sys.stderr)
        return 1
    code = int(done["exit"])
    if code < 0:  # killed by a signal: die of it too, as DVC would see from a cold run
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


# ------------------------------------------------------------------------------ the server
def serve(path: Path, run: Run, finish: Callable[[], None], idle: float | None = None) -> None:
    """Import :data:`PRELOAD`, listen on ``path``, fork a child per request that calls
    ``run(argv)`` then ``finish()`` (the CLI's main and exit hooks); exit when idle."""
    idle = float(os.environ.get("TRANSFERLAB_WARM_IDLE", "60")) if idle is None else idle
    stopping = False

    def on_term(_signum: int, _frame: Any) -> None:  # stop(): no new stages, let these end
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    path.with_suffix(".pid").write_text(f"{os.getpid()}\n")
    t0 = time.monotonic()
    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in PRELOAD:
        importlib.import_module(name)
    _log(f"pid {os.getpid()} imported {len(sys.modules)} modules in {time.monotonic() - t0:.1f}s")

    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp))
    listener.listen(16)
    os.replace(tmp, path)  # appears ready, never half-bound
    ino = path.stat().st_ino
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    children: dict[int, socket.socket] = {}
    last = time.monotonic()
    try:
        while children or (not stopping and time.monotonic() - last < idle):
            if stopping and listener.fileno() >= 0:
                sel.unregister(listener)
                listener.close()
            for key, _ in sel.select(timeout=0.05):
                if key.data is None:
                    conn, _ = listener.accept()
                    pid = _fork_child(conn, listener, sel, children, run, finish)
                    if pid is None:
                        conn.close()
                        continue
                    children[pid] = conn
                    sel.register(conn, selectors.EVENT_READ, pid)
                else:  # the caller hung up before its stage ended: the stage must not outlive it
                    with contextlib.suppress(OSError):
                        if key.fileobj.recv(1):
                            continue
                    _log(f"caller of {key.data} went away: killing it")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(key.data, signal.SIGKILL)
                    sel.unregister(key.fileobj)
            _reap(children, sel)
            if children:
                last = time.monotonic()
    finally:
        with contextlib.suppress(OSError):
            if path.stat().st_ino == ino:
                path.unlink()
                path.with_suffix(".pid").unlink()
        _log(f"pid {os.getpid()} exits")


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def _reap(children: dict[int, socket.socket], sel: selectors.BaseSelector) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        _log(f"{pid} exited {code}")
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(conn)
        with contextlib.suppress(OSError):
            _send(conn, {"exit": code})
        conn.close()


def _fork_child(
    conn: socket.socket,
    listener: socket.socket,
    sel: selectors.BaseSelector,
    children: dict[int, socket.socket],
    run: Run,
    finish: Callable[[], None],
) -> int | None:
    try:
        conn.settimeout(10)
        head, fds, _flags, _addr = socket.recv_fds(conn, 4, 3)
        if len(head) != 4 or len(fds) != 3:
            raise OSError("malformed request")
        body = _recv_exact(conn, int.from_bytes(head, "big"))
        if body is None:
            raise OSError("truncated request")
        req = json.loads(body)
        conn.settimeout(None)
    except (OSError, ValueError) as exc:
        _log(f"bad request: {exc}")
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: becomes the caller's command, never returns
        code = 1
        try:
            sel.close()
            listener.close()
            for other in children.values():
                other.close()
            conn.close()
            code = _child(req, fds, run, finish)
        except BaseException:  # the child must end here whatever happens
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    _log(f"{pid} runs {' '.join(req['argv'][1:])} in {req['cwd']}")
    _send(conn, {"pid": pid})
    return pid


def _child(req: dict[str, Any], fds: list[int], run: Run, finish: Callable[[], None]) -> int:
    mark_child()
    os.setpgid(0, 0)  # its own group: the server and the caller signal it and its fit workers
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(s, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(req["cwd"])
    os.umask(int(req["umask"]))
    os.environ.clear()
    os.environ.update(req["env"])
    sys.argv = list(req["argv"])
    with contextlib.suppress(Exception):  # stdout to a terminal is line-buffered, as in a cold run
        sys.stdout.reconfigure(line_buffering=os.isatty(1))
    try:
        code = run(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finish()
    return int(code)


def stop(path: Path | None = None) -> bool:
    """Stop a server (default: this environment's) once its running stages end; True if one
    was running."""
    return _signal_server(path or socket_path(), signal.SIGTERM)
