"""A real Celery worker whose first key change pauses inside its transaction, to be killed there.

Run as `python tests/support/paused_worker.py <celery worker args>`. PAUSE_MARKER names a file
the paused process writes its pid into; PAUSE_SECONDS is how long it waits (default 120).
Later changes (once the marker exists) run normally, so a redelivered task can finish the job.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from worker.service.writer import Writer

_apply = Writer._apply


def _paused_apply(self: Writer, *args: Any, **kwargs: Any) -> Any:
    change = _apply(self, *args, **kwargs)
    marker = Path(os.environ["PAUSE_MARKER"])
    if change is not None and not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(float(os.environ.get("PAUSE_SECONDS", "120")))
    return change


Writer._apply = _paused_apply  # type: ignore[method-assign]

if __name__ == "__main__":
    import sys

    from worker.celery import app

    app.worker_main(["worker", *sys.argv[1:]])
