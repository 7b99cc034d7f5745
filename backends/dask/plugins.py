"""The worker plugins that put the user's module folders on every worker's path and a
run's storage options in every worker.

A module of its own, beside the task bodies, so a worker that unpickles it imports only
this and ``distributed`` (which it has), never the driver, the compiler or networkx.
"""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin

from pipec.backends.runtime import storage
from pipec.backends.runtime.tasks import ensure_path


class PathsPlugin(WorkerPlugin):
    """The user's module folders on every worker, also on workers that join later."""

    def __init__(self, roots: list[str]):
        self.roots = list(roots)

    def setup(self, worker=None):
        ensure_path(self.roots)


class StoragePlugin(WorkerPlugin):
    """A run's storage options (:func:`storage.shipped` on its driver: the endpoint and
    credentials given in Python) on every worker, also on workers that join later, set
    before the worker runs any task of the run; removed when the run ends (the driver
    unregisters the plugin), and the worker's options from before put back."""

    def __init__(self, options):
        self.options = options
        self._before = None

    def setup(self, worker=None):
        self._before = storage.adopt(self.options)

    def teardown(self, worker=None):
        storage.adopt(self._before)

    def __repr__(self) -> str:
        return f"StoragePlugin({self.options!r})"
