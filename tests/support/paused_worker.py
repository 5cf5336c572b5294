"""A real Celery worker whose first key change (of one realm or of a batch) pauses inside its
transaction, to be killed there.

Run as `python tests/support/paused_worker.py <celery worker args>`. PAUSE_MARKER names a file
the paused process writes its pid into; PAUSE_SECONDS is how long it waits (default 120).
Later changes (once the marker exists) run normally, so a redelivered task can finish the job.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from worker.service import batch
from worker.service.writer import Writer

_apply = Writer._apply
_write = batch._write


def _pause() -> None:
    marker = Path(os.environ["PAUSE_MARKER"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(float(os.environ.get("PAUSE_SECONDS", "120")))


def _paused_apply(self: Writer, *args: Any, **kwargs: Any) -> Any:
    change = _apply(self, *args, **kwargs)
    if change is not None:
        _pause()
    return change


def _paused_write(session: Any, planned: list[Any]) -> None:
    _write(session, planned)
    if planned:
        _pause()


Writer._apply = _paused_apply  # type: ignore[method-assign]
batch._write = _paused_write

if __name__ == "__main__":
    import sys

    from worker.celery import app

    app.worker_main(["worker", *sys.argv[1:]])
