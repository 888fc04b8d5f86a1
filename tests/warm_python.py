"""Python processes that start with torch already imported, for the tests that run a snippet or
an example as a reader would (tests/test_snippets.py, tests/test_examples.py) whose first import
is torch's.

Importing torch and torch._dynamo (which every `torch.optim.Optimizer` imports) costs about 3
CPU-seconds, most of what such a run costs. A server process imports them once and forks a child
per run: the child takes the run's folder, environment and arguments, and runs the code in a
fresh `__main__` module, so a snippet that forgets an import still fails as it would in a fresh
process. Nothing of lazyadam is imported before the fork: the package, its kernel cache and its
environment variables are the child's own, as in a process of its own. (A run that sets
environment variables before importing torch, or imports something else first, takes a process
of its own: torch read its environment, and loaded OpenMP, in the server.)
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

#: What the server imports before it forks: what a run that imports torch first would import.
PRELOAD = ("torch", "torch._dynamo")

SERVER = r"""
import atexit, importlib, json, os, runpy, sys, traceback, types
for name in sys.argv[1:]:
    importlib.import_module(name)
sys.stdout.write("ready\n")
sys.stdout.flush()
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.chdir(job["cwd"])
            os.environ.clear()
            os.environ.update(job["env"])
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
            sys.argv = job["argv"]
            if job["script"]:
                sys.path[0] = os.path.dirname(os.path.abspath(job["argv"][0]))
                runpy.run_path(job["argv"][0], run_name="__main__")
            else:
                sys.path[0] = ""
                main = sys.modules["__main__"] = types.ModuleType("__main__")
                exec(compile(job["code"], "<string>", "exec"), main.__dict__)
            status = 0
        except SystemExit as end:
            if end.code is None or isinstance(end.code, int):
                status = end.code or 0
            else:
                sys.stderr.write(f"{end.code}\n")
        except BaseException:
            traceback.print_exc()
        finally:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    sys.stdout.write(f"{pid}\n")
    sys.stdout.flush()
    _, wait_status = os.waitpid(pid, 0)
    sys.stdout.write(f"{os.waitstatus_to_exitcode(wait_status)}\n")
    sys.stdout.flush()
"""


class WarmPython:
    """`run(code=...)` or `run(script=..., args=...)`: like `subprocess.run([sys.executable, "-c",
    code])` (or the script with its arguments), with captured text output, in a child of the
    server. One run at a time (runs from several threads wait their turn)."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD):
        self._server = subprocess.Popen([sys.executable, "-c", SERVER, *preload],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._lock = threading.Lock()
        if self._server.stdout.readline() != "ready\n":
            raise RuntimeError(f"the warm Python server did not start (it imports {preload})")

    def run(self, *, code: str | None = None, script: Path | None = None,
            args: tuple[str, ...] = (), cwd: Path, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        """The finished run: its exit status (a negative one for a signal), stdout and stderr.

        Raises:
            subprocess.TimeoutExpired: the run took more than `timeout` seconds (it was killed).
        """
        argv = [str(script), *args] if script is not None else ["-c", *args]
        with self._lock, tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            job = {"code": code, "script": script is not None, "argv": argv, "cwd": str(cwd),
                   "env": dict(os.environ if env is None else env), "stdout": str(out),
                   "stderr": str(err)}
            self._server.stdin.write(json.dumps(job) + "\n")
            self._server.stdin.flush()
            pid = int(self._server.stdout.readline())
            ready, _, _ = select.select([self._server.stdout], [], [], timeout)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                self._server.stdout.readline()
                raise subprocess.TimeoutExpired(argv, timeout, out.read_text(), err.read_text())
            status = int(self._server.stdout.readline())
            return subprocess.CompletedProcess(argv, status, out.read_text(), err.read_text())

    def close(self) -> None:
        self._server.stdin.close()
        self._server.wait()
