"""The worker plugin that puts the user's module folders on every worker's path.

A module of its own, beside the task bodies, so a worker that unpickles it imports only
this and ``distributed`` (which it has), never the driver, the compiler or networkx.
"""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin

from pipec.backends.runtime.tasks import ensure_path


class PathsPlugin(WorkerPlugin):
    """The user's module folders on every worker, also on workers that join later."""

    def __init__(self, roots: list[str]):
        self.roots = list(roots)

    def setup(self, worker=None):
        ensure_path(self.roots)
