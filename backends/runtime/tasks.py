"""Task bodies: what one partition of a stage does, identical on every engine."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from pipec.backends.runtime import storage

if TYPE_CHECKING:  # workers import this module: keep pydantic and networkx out of their start-up
    from pipec.compiler.ir import FnRef


def ensure_path(roots: Sequence[str]) -> None:
    """Make the user's module folders importable (driver and workers alike)."""
    for root in roots:
        if root not in sys.path:
            sys.path.insert(0, root)


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker process needs before it runs a task (or hosts an actor) of a run:
    the user's module folders on its path, and the run's storage options from its driver
    (:func:`storage.shipped`: the endpoint and credentials given in Python), so every task
    reaches storage as the driver does. Engines that hand every task an argument send
    this one; its text never shows the options' values."""

    paths: tuple[str, ...] = ()
    storage: "storage.Options | None" = None

    def apply(self) -> None:
        ensure_path(self.paths)
        storage.adopt(self.storage)


def forget_stale_modules(names: Iterable[str], roots: Sequence[str]) -> None:
    """Forget the modules ``names`` (and their submodules) where this process loaded them
    from elsewhere than the copy ``roots`` hold: a second pipeline in one process whose
    module shares a name with an earlier pipeline's (``m``, say) gets its own, not the
    earlier one. A module ``roots`` do not hold (``operator``, ``numpy``) is left alone."""
    folders = tuple(os.path.join(os.path.abspath(r), "") for r in roots)
    stale = False
    for name in names:
        top = name.split(".")[0]
        loaded = sys.modules.get(top)
        where = getattr(loaded, "__file__", None)
        ours = any(os.path.exists(os.path.join(r, f"{top}.py")) or os.path.isdir(os.path.join(r, top))
                   for r in roots)
        if loaded is None or where is None or not ours or os.path.abspath(where).startswith(folders):
            continue
        for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
            del sys.modules[key]
        stale = True
    if stale:
        resolve.cache_clear()
        importlib.invalidate_caches()


@lru_cache(maxsize=None)
def resolve(module: str, attr: str) -> Callable:
    """Import ``module`` and return its attribute ``attr``."""
    return getattr(importlib.import_module(module), attr)


def fn_of(ref: "FnRef | None") -> Callable | None:
    return resolve(ref.module, ref.attr) if ref is not None else None


@lru_cache(maxsize=None)
def _accepts_partition(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "partition" in params


# How much of a failing element an error message shows.
ELEMENT_CLIP = 80


def apply_elementwise(kind: str, fn: Callable, items: list, bindings: dict[str, Any], partition: int,
                      batch: str | None = None) -> list:
    """One partition of ``map``/``flat_map``/``filter``/``map_batches``/``map_values``.
    With ``batch`` (``map_batches ... as pandas``) ``items`` is that batch already and
    ``fn``'s result is returned as it is (see :mod:`.batches`). When ``fn`` raises, the
    exception is marked with the element it failed on (see :func:`failing_element`); the
    loops themselves stay as fast as before."""
    try:
        return _apply_elementwise(kind, fn, items, bindings, partition, batch)
    except Exception as exc:
        if kind != "map_batches":
            _mark_element(exc, items, kind)
        raise


def failing_element(exc: BaseException) -> str:
    """`` at element I = ITEM`` (the item clipped) for an exception marked by
    apply_elementwise, else ""."""
    found = getattr(exc, "pipec_element", None)
    if found is None:
        return ""
    index, text = found
    return f" at element {index} = {text}"


def user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` from the first frame of user code on (pipec's frames
    before it left out), as text."""
    import traceback
    tb = exc.__traceback__
    ours = pipec_folders()
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(ours):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _mark_element(exc: BaseException, items: list, kind: str) -> None:
    """Find the element the user function was called with when it raised: the first
    frame outside this file is the user's function, and one of its locals is the item
    itself (by identity; nothing is run again, so an effectful stage stays safe)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    if tb is None:
        return
    args = tb.tb_frame.f_locals
    code = tb.tb_frame.f_code
    first = [args[n] for n in code.co_varnames[:max(1, code.co_argcount)] if n in args]
    position = {}
    for i, item in enumerate(items):
        position.setdefault(id(item), i)
        if kind == "map_values" and isinstance(item, tuple) and len(item) == 2:
            position.setdefault(id(item[1]), i)  # the function gets the value of a pair
    for value in first + list(args.values()):
        if id(value) in position:
            i = position[id(value)]
            text = repr(items[i])
            if len(text) > ELEMENT_CLIP:
                text = text[:ELEMENT_CLIP - 3] + "..."
            try:
                exc.pipec_element = (i, text)
            except AttributeError:  # an exception type without a __dict__
                pass
            return


def _apply_elementwise(kind: str, fn: Callable, items: list, bindings: dict[str, Any], partition: int,
                       batch: str | None) -> list:
    # Without bindings, the builtins' C loops call ``fn`` in the same order, faster.
    if kind == "map":
        return list(map(fn, items)) if not bindings else [fn(x, **bindings) for x in items]
    if kind == "flat_map":  # list.extend, not a nested comprehension: 25-30% faster per item
        out: list = []
        extend = out.extend
        if bindings:
            for x in items:
                extend(fn(x, **bindings))
        else:
            for x in items:
                extend(fn(x))
        return out
    if kind == "filter":
        return list(filter(fn, items)) if not bindings else [x for x in items if fn(x, **bindings)]
    if kind == "map_values":
        out = []
        for record in items:
            try:
                key, value = record
            except (TypeError, ValueError):
                raise TypeError(f"map_values needs (key, value) pairs, got {record!r:.60}") from None
            out.append((key, fn(value, **bindings)))
        return out
    if kind == "map_batches":
        extra = {"partition": partition} if _accepts_partition(fn) else {}
        result = fn(items, **bindings, **extra)
        if batch is not None:
            return result
        return list(result) if result is not None else []
    raise ValueError(f"unknown elementwise kind {kind!r}")


@lru_cache(maxsize=None)
def pipec_folders() -> tuple[str, ...]:
    """The folders pipec's own code lives in, each ending in a separator: one per layer
    in a source checkout (``dsl/``, ``backends/``, ...), all under ``pipec/`` in a wheel."""
    import pipec
    import pipec.backends
    import pipec.compiler
    import pipec.dsl
    import pipec.grammar
    return tuple(os.path.join(folder, "") for package in (pipec, pipec.backends, pipec.compiler, pipec.dsl,
                                                          pipec.grammar) for folder in package.__path__)


def user_frame(exc: BaseException) -> str | None:
    """``file:line in function`` of the innermost frame outside pipec, for error messages."""
    tb = exc.__traceback__
    found = None
    ours = pipec_folders()
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.startswith(ours) and "site-packages" not in filename and "<frozen" not in filename:
            found = f"{filename}:{tb.tb_lineno} in {tb.tb_frame.f_code.co_name}"
        tb = tb.tb_next
    return found


def run_with_timeout(body: Callable[[], Any], timeout: float | None, name: str) -> Any:
    """``body()``, raising TimeoutError after ``timeout`` seconds. Python cannot stop a
    thread, so a task past its time is left to finish alone (a daemon thread)."""
    if timeout is None:
        return body()
    box: dict = {}

    def target():
        try:
            box["result"] = body()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
    thread = threading.Thread(target=target, daemon=True, name=name)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box["result"]
