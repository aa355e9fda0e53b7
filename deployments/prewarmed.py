"""A prewarmed flow-run server: Prefect and the flows imported once, each run a fork of that process.

    python -m deployments.prewarmed --socket PATH [--preload flows.ci,flows.cd,flows.e2e]

`make server` starts one beside the workers; their pools' command is `deployments.launch`, which
hands each flow run over this socket. The server process stays single-threaded and never talks to
the API, so forking it is safe: for each request it forks a handler, which forks the run's process
(environment, working directory and stdio of the launcher; Prefect's settings re-read from that
environment), sends back its PID, waits for it and sends back its exit code. The run's process
then does exactly what `python -m prefect.engine` does (the module is run as `__main__`), only
without the imports.

Stale code is never run: before each fork the server compares the modification times of the
project's modules it imported with those it loaded; if one changed, it answers `STALE` (the
launcher runs that flow run the ordinary way) and re-executes itself to import the new code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import runpy
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from deployments.launch import HEADER

__all__ = ["main"]

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_PRELOAD = ("flows.ci", "flows.cd", "flows.e2e")


def _project_modules() -> dict[str, int]:
    """Source files of the project's imported modules and their modification times (ns)."""
    seen: dict[str, int] = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file or not file.startswith(str(PROJECT) + os.sep):
            continue
        try:
            seen[file] = os.stat(file).st_mtime_ns
        except OSError:
            seen[file] = -1
    return seen


def _stale(loaded: dict[str, int]) -> bool:
    for file, mtime in loaded.items():
        try:
            if os.stat(file).st_mtime_ns != mtime:
                return True
        except OSError:
            return True
    return False


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = conn.recv(min(left, 1 << 16))
        if not chunk:
            raise ConnectionError("launcher went away")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _run_engine(request: dict[str, object], fds: list[int], server_pid: int) -> None:
    """In the run's process: take over the launcher's stdio, cwd and environment; run prefect.engine."""
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
    sys.argv = ["prefect.engine", *[str(a) for a in argv]]

    import prefect.context
    from prefect.logging.configuration import setup_logging

    prefect.context.refresh_global_settings_context()  # PREFECT_* of this run, not of the server
    setup_logging(incremental=False)
    code = 0
    try:
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # what `python -m` would print and exit 1 with
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    os._exit(code)


def _handle(conn: socket.socket) -> None:
    """In a handler process: read one request, fork the run's process, report its PID and exit code."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    msg, fds, _flags, _addr = socket.recv_fds(conn, HEADER.size, 3)
    try:
        (size,) = HEADER.unpack(msg)
        request = json.loads(_recv_exactly(conn, size))
    except (ConnectionError, ValueError, OSError):
        os._exit(1)
    server_pid = os.getppid()
    pid = os.fork()
    if pid == 0:
        try:
            conn.close()
            _run_engine(request, fds, server_pid)
        finally:
            os._exit(1)  # never back into the handler
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(f"PID {pid}\n".encode())
    except OSError:
        pass
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    try:
        conn.sendall(f"EXIT {code if code >= 0 else 128 - code}\n".encode())
    except OSError:
        pass
    os._exit(0)


def serve(path: Path, preload: Sequence[str]) -> None:
    """Import `preload`, listen on `path` and fork a handler per request; re-exec on stale code."""
    import prefect.engine  # what `python -m prefect.engine` imports first
    import prefect.flow_engine  # noqa: F401

    for name in preload:
        importlib.import_module(name)
    loaded = _project_modules()
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
            if _stale(loaded):
                conn.sendall(b"STALE\n")
                conn.close()
                listener.close()
                print("project code changed: re-importing", flush=True)
                os.execv(sys.executable, [sys.executable, "-m", "deployments.prewarmed", "--socket", str(path),
                                          "--preload", ",".join(preload)])
            if os.fork() == 0:
                try:
                    listener.close()
                    _handle(conn)
                finally:
                    os._exit(1)  # a handler never returns into the server's loop
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
