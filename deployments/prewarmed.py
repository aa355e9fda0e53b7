"""A prewarmed flow-run server: Prefect and the flows imported once, each run a fork of that process.

    python -m deployments.prewarmed --socket PATH [--preload flows.ci,flows.cd,flows.e2e]

`make server` starts one beside the workers; their pools' command is `deployments.launch`, which
hands each flow run over this socket. The server process stays single-threaded and never talks to
the API, so forking it is safe: for each request it forks a handler, which forks the run's process
(environment, working directory and stdio of the launcher; Prefect's settings re-read from that
environment), sends back its PID, waits for it and sends back its exit code. The run's process
then does exactly what `python -m prefect.engine` does (the module is run as `__main__`), only
without the imports, and before it exits it waits for Prefect's event and log workers to send what
they hold (`EventsWorker.drain_all()`, `APILogWorker.drain_all()`: what the interpreter's shutdown
does for a plain `python -m prefect.engine`), so the run's last logs and events reach the server.

A request may name its `module` instead: one of MODULES, run as `python -m MODULE` would be. Besides
prefect.engine that is only `adapters.cli`, which the tests use to run the CLI without importing
Prefect again for each of their hundred-odd commands (tests/cli_runner.py); anything else is refused.

The run's process leads a process group of its own: the launcher relays SIGTERM/SIGINT/SIGHUP to
that whole group (the run and every process it started), and when the launcher dies (the worker's
SIGKILL after its grace period) the handler kills the group.

The server never forks when it could hand out something other than what a fresh
`python -m prefect.engine` would run; it answers `REFUSED <reason>` (the launcher then runs that
flow run the ordinary way) when it has more than one thread (a fork would copy locks another thread
holds), and when the request names another project directory (SUNDAY_RELEASE_DIR); and `STALE`,
then re-executes itself to import the new code, when one of the modules it imported from the
project or from Prefect changed on disk, a Python file appeared or went away beside them, the
project directory was replaced, or the installed Prefect's version changed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import runpy
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from deployments.launch import HEADER

__all__ = ["main"]

PROJECT = Path(__file__).resolve().parent.parent
# the flows, and prefect_aws's S3 block: the platform's result storage (s3-bucket/sunday-results), which every run
# loads before it turns Running (0.3 s of imports a run would otherwise pay). `serve` loads Prefect's collections
# too (prefect.plugins.load_prefect_collections, cached for the process): loading any block by its document
# imports every installed collection first (prefect-kubernetes, -docker, -redis, -aws), 0.5-0.9 s a run paid
# between its pull step and Running
DEFAULT_PRELOAD = ("flows.ci", "flows.cd", "flows.e2e", "flows.preview", "flows.gc", "prefect_aws.s3")
# what a request may run (its "module", default prefect.engine): a flow run, or the sunday-release CLI
# (`python -m adapters.cli`: the tests run the CLI this way, tests/cli_runner.py)
MODULES = ("prefect.engine", "adapters.cli")
DRAIN_SECONDS = 30.0  # at most this long for the run's last events and logs to be sent

Snapshot = tuple[object, ...]


def _code_roots() -> tuple[str, ...]:
    """The directories whose imported modules a run must see as they are on disk: the project and Prefect."""
    import prefect

    return str(PROJECT) + os.sep, str(Path(prefect.__file__).resolve().parent) + os.sep


def _snapshot() -> Snapshot:
    """What the imported code is made of: every module file of the project and Prefect with its mtime (ns),
    the Python files beside them, the project directory's identity and Prefect's installed version."""
    roots = _code_roots()
    venv = os.path.realpath(sys.prefix) + os.sep  # inside the project here: its modules are Prefect's kind
    files: dict[str, int] = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file or not file.startswith(roots):
            continue
        try:
            files[file] = os.stat(file).st_mtime_ns
        except OSError:
            files[file] = -1
    listings: dict[str, frozenset[str]] = {}
    for folder in {os.path.dirname(f) for f in files if f.startswith(roots[0]) and not f.startswith(venv)}:
        try:
            listings[folder] = frozenset(n for n in os.listdir(folder) if n.endswith(".py"))
        except OSError:
            listings[folder] = frozenset()
    try:
        st = os.stat(PROJECT)
        project: tuple[int, int] = (st.st_dev, st.st_ino)
    except OSError:
        project = (-1, -1)
    try:
        version = importlib.metadata.version("prefect")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    return files, listings, project, version


def _threads() -> int:
    """Threads of this process, those Python does not know about included (Linux), else Python's count."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _other_project(request: dict[str, object]) -> str | None:
    """The project directory the request asks for when it is not the one this server imported, else None."""
    env = request.get("env")
    wanted = env.get("SUNDAY_RELEASE_DIR") if isinstance(env, dict) else None
    if wanted and Path(str(wanted)).resolve() != PROJECT:
        return str(wanted)
    return None


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = conn.recv(min(left, 1 << 16))
        if not chunk:
            raise ConnectionError("launcher went away")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _drain() -> None:
    """Send what Prefect's event and log workers still hold, as the interpreter's shutdown would."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    deadline = time.monotonic() + DRAIN_SECONDS
    for worker in (EventsWorker, APILogWorker):  # events first: sending them may log
        try:
            worker.drain_all(timeout=max(deadline - time.monotonic(), 1.0))
        except Exception:  # a run's exit code never depends on its telemetry
            import traceback

            traceback.print_exc()


def _module(request: dict[str, object]) -> str:
    """The module the request runs (`python -m MODULE`): one of MODULES, prefect.engine when it names none."""
    module = request.get("module", "prefect.engine")
    return module if isinstance(module, str) and module in MODULES else ""


def _run_module(request: dict[str, object], fds: list[int], server_pid: int) -> None:
    """In the run's process: take over the launcher's stdio, cwd and environment; run the request's module
    as `python -m` would (prefect.engine for a flow run)."""
    os.setsid()  # a process group of its own: a cancel reaches every process the run starts
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    for fd in fds:
        os.close(fd)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    env = request["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in env.items()})
    os.environ["SUNDAY_PREWARMED"] = str(server_pid)  # the run can tell where it came from
    os.chdir(str(request["cwd"]))
    argv = request["argv"]
    assert isinstance(argv, list)
    module = _module(request)
    sys.argv = [module, *[str(a) for a in argv]]

    import prefect.context
    from prefect.logging.configuration import setup_logging

    prefect.context.refresh_global_settings_context()  # PREFECT_* of this run, not of the server
    setup_logging(incremental=False)
    code = 0
    try:
        # as `python -m`: the module runs as __main__ beside no imported copy of itself (the preloaded copy only
        # warmed its imports; runpy would warn that it found one)
        sys.modules.pop(module, None)
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # what `python -m` would print and exit 1 with
        import traceback

        traceback.print_exc()
        code = 1
    _exit(code)


def _exit(code: int) -> NoReturn:
    """The only way a forked process (a run or a handler) ends: Prefect's logs and events drained, stdio flushed,
    then `os._exit` — never back up the server's stack, whose `finally` blocks are the server's, not this fork's.
    In a handler the drain finds no worker and returns at once."""
    _drain()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _kill_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM to the process group, SIGKILL to what is left of it after `grace` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _peek(conn: socket.socket) -> bytes:
    """A byte the launcher sent without taking it; b"" once the launcher is gone."""
    try:
        return conn.recv(1, socket.MSG_PEEK)
    except OSError:
        return b""


def _handle(conn: socket.socket) -> None:
    """In a handler process: read one request, fork the run's process, report its PID and exit code."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    msg, fds, _flags, _addr = socket.recv_fds(conn, HEADER.size, 3)
    try:
        (size,) = HEADER.unpack(msg)
        request = json.loads(_recv_exactly(conn, size))
    except (ConnectionError, ValueError, OSError):
        _exit(1)
    if not _module(request):
        print(f"REFUSED module: {request.get('module')!r} is not one of {', '.join(MODULES)}", flush=True)
        conn.sendall(b"REFUSED module\n")
        _exit(0)
    other = _other_project(request)
    if other is not None:
        print(f"REFUSED other-project: the run wants {other}, this server imported {PROJECT}", flush=True)
        conn.sendall(b"REFUSED other-project\n")
        _exit(0)
    server_pid = os.getppid()
    pid = os.fork()
    if pid == 0:
        try:
            conn.close()
            _run_module(request, fds, server_pid)
        finally:
            _exit(1)  # never back into the handler
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(f"PID {pid}\n".encode())
    except OSError:
        pass
    status = None
    while status is None:  # the run's exit, or the launcher's death (then the run goes with it)
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            status = wait_status
            break
        readable, _, _ = select.select([conn], [], [], 0.2)
        if readable and not _peek(conn):
            _kill_group(pid)
            status = os.waitpid(pid, 0)[1]
    code = os.waitstatus_to_exitcode(status)
    try:
        conn.sendall(f"EXIT {code if code >= 0 else 128 - code}\n".encode())
    except OSError:
        pass
    _exit(0)


def serve(path: Path, preload: Sequence[str]) -> None:
    """Import `preload`, listen on `path` and fork a handler per request; refuse or re-exec (module docstring)."""
    import prefect.engine  # what `python -m prefect.engine` imports first
    import prefect.flow_engine  # noqa: F401

    for name in preload:
        importlib.import_module(name)
    from prefect.plugins import load_prefect_collections

    load_prefect_collections()  # what Block.load does first in every run: its cache is inherited by each fork
    loaded = _snapshot()
    if path.exists() or path.is_symlink():
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(64)
    listener.settimeout(1.0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"prewarmed flow-run server on {path} (pid {os.getpid()}; {', '.join(preload)})", flush=True)
    try:
        while True:
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                pass
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threads = _threads()
            if threads > 1:
                print(f"REFUSED threads: this process has {threads} threads, a fork would copy their locks",
                      flush=True)
                conn.sendall(b"REFUSED threads\n")
                conn.close()
                continue
            if _snapshot() != loaded:
                conn.sendall(b"STALE\n")
                conn.close()
                listener.close()
                print("project or Prefect code changed: re-importing", flush=True)
                os.execv(sys.executable, [sys.executable, "-m", "deployments.prewarmed", "--socket", str(path),
                                          "--preload", ",".join(preload)])
            if os.fork() == 0:
                try:
                    listener.close()
                    _handle(conn)
                finally:
                    _exit(1)  # a handler never returns into the server's loop
            conn.close()
    finally:
        listener.close()
        if path.exists():
            path.unlink()


def launch_command() -> str:
    """The flow-run command that goes through the launcher, with this Python."""
    return f"{sys.executable} -m deployments.launch"


def pool_job_template() -> dict[str, object]:
    """Prefect's process work-pool base job template with `launch_command()` as the default command."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    template["variables"]["properties"]["command"]["default"] = launch_command()
    return template


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.prewarmed", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--socket", type=Path, help="serve on this Unix socket")
    what.add_argument("--pool-template", action="store_true",
                      help="print the process work-pool base job template whose command is the launcher")
    parser.add_argument("--preload", default=",".join(DEFAULT_PRELOAD),
                        help="modules to import up front (default %(default)s)")
    args = parser.parse_args(argv)
    if args.pool_template:
        print(json.dumps(pool_job_template(), indent=2))
        return
    serve(args.socket, [m for m in args.preload.split(",") if m])


if __name__ == "__main__":
    main()
