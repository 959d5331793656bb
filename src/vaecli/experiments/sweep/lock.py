"""The sweep lock: one process at a time runs a sweep."""

from __future__ import annotations

import os
from typing import Any

from ...errors import ConfigError
from .plan import Plan

LOCK = "lock"


class SweepLock:
    """An exclusive lock on the sweep's folder while one process runs it (released when it exits,
    even when killed); a second process is refused with a ConfigError."""

    def __init__(self, plan: Plan) -> None:
        self.path = plan.folder / LOCK
        self.fh: Any = None

    def __enter__(self) -> SweepLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")  # held for the life of the sweep
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.seek(0)
            pid = self.fh.read().strip() or "?"
            self.fh.close()
            raise ConfigError(
                f"sweep {self.path.parent.name!r} is being run by another process (pid {pid}): wait for it or stop it"
            ) from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(str(os.getpid()))
        self.fh.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fh is not None:
            self.fh.close()
