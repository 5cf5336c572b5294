"""`python -m worker.http [--host H] [--port P]`: the same as `keyrotor web`."""

from __future__ import annotations

import sys

from worker.cli.app import main

if __name__ == "__main__":
    sys.argv = ["keyrotor", "web", *sys.argv[1:]]
    main()
