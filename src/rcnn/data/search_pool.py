"""Worker processes for Selective Search that never import the caller's main module.

multiprocessing's ``forkserver`` and ``spawn`` children (``fork`` is no choice: a child forked
while OpenCV's or torch's thread pools hold a lock can hang) first re-import ``__main__`` from
its file. Called from a script without ``if __name__ == "__main__":``, each child re-ran the
script, loaded the model, tried to start a pool of its own, died, and was replaced by the pool:
the caller waited forever. Here each worker is ``python -m rcnn.data.search_pool``, a fresh
interpreter that imports only this package, and the same in a script, in ``python -c`` and in
a Jupyter kernel. It reads ``(function, argument)`` pairs pickled on its stdin and answers each
with ``(ok, result or exception)`` pickled on its stdout, one job at a time; a worker that dies
is reported, not waited for.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from pathlib import Path

from rcnn.errors import RcnnError

STOP_SECONDS = 5  # an idle worker leaves at once when its stdin closes; a busy one is killed


class SearchWorkers:
    """``count`` worker processes; :meth:`imap` runs a module-level function over jobs."""

    def __init__(self, count: int):
        self.procs: list[subprocess.Popen] = []
        try:
            for _ in range(count):
                self.procs.append(_start_worker())
        except BaseException:
            self.terminate()
            raise

    def imap(self, function: Callable, jobs: list) -> Iterator:
        """``function(job)`` of each job, in order, as they finish (each on an idle worker).

        Raises:
            RcnnError: a worker died (killed, out of memory); the exception a job raised.
        """
        answers: dict[int, object] = {}
        todo = iter(enumerate(jobs))
        busy: dict[int, tuple[subprocess.Popen, int]] = {}  # stdout's fd -> worker, job index
        for proc in self.procs:
            self._send(proc, function, todo, busy)
        done = 0
        while done < len(jobs):
            if done in answers:
                yield answers.pop(done)
                done += 1
                continue
            for stream in wait([proc.stdout for proc, _ in busy.values()]):
                proc, index = busy.pop(stream.fileno())
                answers[index] = _receive(proc, jobs[index])
                self._send(proc, function, todo, busy)

    @staticmethod
    def _send(proc: subprocess.Popen, function: Callable, todo: Iterator, busy: dict) -> None:
        job = next(todo, None)
        if job is not None:
            pickle.dump((function, job[1]), proc.stdin)
            proc.stdin.flush()
            busy[proc.stdout.fileno()] = (proc, job[0])

    def terminate(self, kill: bool = False) -> None:
        """Stops every worker: idle ones leave when their stdin closes, busy ones (or all,
        with ``kill``) are killed."""
        for proc in self.procs:
            with contextlib.suppress(OSError):  # a worker that died has closed its end
                proc.stdin.close()
        for proc in self.procs:
            try:
                if kill:
                    proc.kill()
                proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        self.procs = []


def _start_worker() -> subprocess.Popen:
    # The folder this package lies in comes first on the worker's path: the caller may have
    # found it through a sys.path of its own making, which a new interpreter does not inherit.
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-m", "rcnn.data.search_pool"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )


def _receive(proc: subprocess.Popen, job):
    try:
        ok, value = pickle.load(proc.stdout)
    except (EOFError, pickle.UnpicklingError):
        status = proc.wait()
        what = job[0] if isinstance(job, tuple) and job else job
        raise RcnnError(
            f"a Selective Search process stopped (exit status {status}) while searching "
            f"{what}; if it ran out of memory, give fewer --workers"
        ) from None
    if not ok:
        raise value
    return value


def serve(source, sink) -> None:
    """The worker's loop: answers every job read from ``source`` on ``sink`` until
    ``source`` closes."""
    while True:
        try:
            function, argument = pickle.load(source)
        except EOFError:
            return
        try:
            answer = (True, function(argument))
        except Exception as err:  # the caller raises it
            answer = (False, err)
        try:
            data = pickle.dumps(answer)
        except Exception as err:  # an exception that cannot be pickled: its text can
            data = pickle.dumps((False, RuntimeError(f"{type(err).__name__}: {answer[1]}")))
        sink.write(data)
        sink.flush()


def main() -> None:
    from rcnn.data.proposals import _init_worker

    _init_worker()
    # Answers go to a copy of stdout; what a library prints goes to stderr, never into them.
    sink = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, sink)


if __name__ == "__main__":
    main()
