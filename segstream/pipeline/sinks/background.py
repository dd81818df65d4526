"""Work a sink hands to a thread of its own, so that encoding a frame overlaps with the
stage drawing the next one (OpenCV and FFmpeg release the GIL while they work).

Jobs run one at a time, in the order they were submitted; at most ``depth`` wait, so a
slow encoder holds the stage back instead of piling frames up in memory. A job's error
comes back to the sink on its next call, as the ``OutputError`` it was.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

from segstream.errors import OutputError

logger = logging.getLogger(__name__)

_STOP = None


class BackgroundWork:
    """One worker thread running a sink's jobs in order.

    Args:
        name: the thread's name (for logs and debuggers).
        depth: jobs that may wait; ``submit`` blocks beyond that.

    Example:
        >>> done = []
        >>> work = BackgroundWork("example")
        >>> work.submit(lambda: done.append(1))
        >>> work.wait(); done
        [1]
        >>> work.close()
    """

    def __init__(self, name: str, depth: int = 2) -> None:
        self.name = name
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._error: OutputError | None = None
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is _STOP:
                    return
                if self._error is None:  # after a failure the rest is dropped: the sink has failed
                    job()
            except OutputError as exc:
                self._error = exc
            except Exception as exc:  # noqa: BLE001 - a bug in a job must reach the stage, not vanish with the thread
                self._error = OutputError(f"{self.name}: {type(exc).__name__}: {exc}")
            finally:
                self._jobs.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job`` (waits while ``depth`` jobs wait).

        Raises:
            OutputError: an earlier job failed.
        """
        self._raise()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def wait(self) -> None:
        """Return once every job submitted so far has run.

        Raises:
            OutputError: a job failed.
        """
        if self._thread is not None:
            self._jobs.join()
        self._raise()

    def close(self) -> None:
        """Run what waits, then end the thread.

        Raises:
            OutputError: a job failed.
        """
        if self._thread is not None:
            self._jobs.join()
            self._jobs.put(_STOP)
            self._thread.join()
            self._thread = None
        self._raise()
