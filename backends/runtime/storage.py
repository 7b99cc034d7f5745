"""Where pipec reads and writes: plain paths and fsspec URLs, behind one small API.

Every location pipec touches (sources, sinks, actor snapshots, resume records, the run
folder) may be a plain path, a ``file://`` URL or any URL fsspec knows (``s3://``,
``gs://``, ``abfs://``, ``memory://``, ...). Plain paths and ``file://`` go straight to
the local disk (no fsspec needed); the rest goes through fsspec, configured the way the
field expects: the engines' own environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
... read by botocore), fsspec's configuration (files in ``FSSPEC_CONFIG_DIR`` and
``FSSPEC_<PROTOCOL>_<OPTION>`` variables, which worker processes inherit), or
:func:`configure` in the driver's process (``Pipeline.run(storage_options=...)``), whose
options every engine ships to the run's workers (:func:`shipped`, :func:`adopt`).

Writes are atomic everywhere: a reader sees the old object or the whole new one.

* local disk: a temporary file in the same folder, fsync, rename;
* object stores (S3, GCS, Azure, memory): one PUT of the final key (an object appears
  whole or not at all, multipart uploads included), so no temporary is ever left;
* any other fsspec filesystem: a temporary name beside the target, then a move, and the
  temporary removed when the write fails.

A URL whose scheme fsspec does not know, or whose driver is not installed, raises
:class:`StorageUnavailable`, which names the pipec extra to install.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import stat
import tempfile
import uuid
from pathlib import Path
from typing import IO, Mapping

# Protocols whose single PUT of a key is atomic: a write goes straight to the final key.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "memory"})

# The pipec extra that brings a protocol's fsspec driver, and the driver.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "abfs": "azure", "abfss": "azure",
          "az": "azure", "adl": "azure"}
DRIVERS = {"s3": "s3fs", "gcs": "gcsfs", "azure": "adlfs"}


def _oserrors(fn):
    """Every failure of a storage call is an OSError (or StorageUnavailable): drivers
    raise their own types too (botocore's NoCredentialsError, ClientError, ...), and
    callers should not have to know each driver."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (OSError, ValueError, TypeError):  # StorageUnavailable included
            raise
        except Exception as exc:
            raise OSError(f"{type(exc).__name__}: {exc}") from exc
    return wrapper


class StorageUnavailable(OSError):
    """A URL pipec cannot reach from this installation: an unknown scheme, or a scheme
    whose driver (s3fs, gcsfs, adlfs, or fsspec itself) is missing. ``hint`` says what to
    install. An OSError, so code that reports failed reads and writes reports it too
    (a worker without s3fs, say); the pre-flight catches it first and gives the hint."""

    def __init__(self, url: str, message: str, hint: str | None):
        super().__init__(message)
        self.url, self.message, self.hint = url, message, hint


# ---- naming ----------------------------------------------------------------------------------


def protocol_of(url: str | Path) -> str:
    """``"s3"`` for ``s3://b/k``; ``"file"`` for a plain path or a ``file://`` URL."""
    text = str(url)
    if "://" not in text:
        return "file"
    return text.split("://", 1)[0].lower() or "file"


def is_local(url: str | Path) -> bool:
    """Whether ``url`` names the local disk (a plain path or ``file://``)."""
    return protocol_of(url) == "file"


def local_path(url: str | Path) -> str:
    """The local path of a plain path or ``file://`` URL."""
    text = str(url)
    return text[len("file://"):] if text.lower().startswith("file://") else text


def join(base: str | Path, *names: str) -> str:
    """``base`` with ``names`` appended: ``os.path.join`` for local paths, ``/`` for URLs."""
    if is_local(base):
        return os.path.join(str(base), *names)
    return posixpath.join(str(base).rstrip("/"), *names)


def parent(url: str | Path) -> str:
    """The folder that holds ``url``."""
    if is_local(url):
        return os.path.dirname(local_path(url)) or "."
    scheme, rest = str(url).split("://", 1)
    return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"


def name(url: str | Path) -> str:
    """The last part of ``url``: ``w.json`` for ``s3://b/out/w.json``."""
    return posixpath.basename(str(url).rstrip("/")) if not is_local(url) else os.path.basename(str(url))


def absolute(url: str | Path) -> str:
    """``url`` made independent of the working folder: a local path made absolute, a URL
    unchanged. What is handed to workers, whose working folder is not the driver's."""
    if is_local(url):
        return os.path.abspath(local_path(url))
    return str(url)


# ---- filesystems -----------------------------------------------------------------------------


# This process's own storage options (configure), and the ones of the run whose tasks it
# runs now, shipped from the run's driver (adopt). The run's win where both name an option.
_options: dict[str, dict] = {}
_adopted: dict[str, dict] = {}


def configure(protocol: str, **options) -> None:
    """Storage options for every later access to ``protocol`` in this process (for
    instance ``configure("s3", endpoint_url=..., key=..., secret=...)``). A run started
    from this process ships them to its workers (:func:`shipped`)."""
    _options.setdefault(protocol, {}).update(options)


@contextlib.contextmanager
def configured(options: Mapping[str, Mapping] | None):
    """``options`` (protocol -> fsspec options) added with :func:`configure` for the
    length of a ``with`` block (a run), and this process's options as they were after it,
    so one run's credentials never linger into the next."""
    saved = {protocol: dict(given) for protocol, given in _options.items()}
    try:
        for protocol, given in (options or {}).items():
            configure(protocol, **given)
        yield
    finally:
        _options.clear()
        _options.update(saved)


class Options:
    """Storage options on their way from a run's driver to its workers (see
    :func:`shipped` and :func:`adopt`): protocol -> fsspec options. They hold
    credentials, so their text (``repr``, ``str``: what logs and error messages show)
    names the protocols and the options' names, never a value."""

    __slots__ = ("values",)

    def __init__(self, values: Mapping[str, Mapping]):
        self.values = {protocol: dict(given) for protocol, given in values.items()}

    def __reduce__(self):
        return (Options, (self.values,))

    def __eq__(self, other) -> bool:
        return isinstance(other, Options) and other.values == self.values

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.values)))

    def __repr__(self) -> str:
        named = "; ".join(f"{protocol}: {', '.join(sorted(given))}" for protocol, given in sorted(self.values.items()))
        return f"<storage options {named}>"

    __str__ = __repr__


def shipped() -> Options | None:
    """The storage options in force in this process (its own and its run's), for the
    workers of a run it drives; None when there are none."""
    merged = {protocol: _options_for(protocol) for protocol in set(_options) | set(_adopted)}
    merged = {protocol: given for protocol, given in merged.items() if given}
    return Options(merged) if merged else None


def adopt(options: Options | None) -> Options | None:
    """Use a run's ``options`` (from :func:`shipped` on its driver) for every later access
    in this process, in place of the run's before (None: no run's options). What a
    worker does before a task of the run touches storage. Returns the ones replaced."""
    before = Options(_adopted) if _adopted else None
    if options != before:
        _adopted.clear()
        if options is not None:
            _adopted.update(Options(options.values).values)  # a copy: never shared with the caller
    return before


def _options_for(protocol: str) -> dict:
    return {**_options.get(protocol, {}), **_adopted.get(protocol, {})}


def filesystem(url: str | Path):
    """``(fs, path)``: the fsspec filesystem that holds ``url`` and the path on it.
    Raises StorageUnavailable for a scheme this installation cannot reach."""
    protocol = protocol_of(url)
    try:
        import fsspec
    except ImportError:
        raise StorageUnavailable(str(url), f"reading or writing `{protocol}://` needs fsspec, which is not installed",
                                 f"pip install 'pipec[{EXTRAS.get(protocol, 's3')}]'") from None
    try:
        return fsspec.core.url_to_fs(str(url), **_options_for(protocol))
    except ImportError as exc:
        extra = EXTRAS.get(protocol)
        module = DRIVERS.get(extra) or exc.name or "its driver"
        raise StorageUnavailable(str(url), f"`{protocol}://` needs {module}, which is not installed",
                                 f"pip install 'pipec[{extra}]'" if extra else f"pip install {module}") from None
    except ValueError as exc:
        if "Protocol not known" not in str(exc):
            raise
        raise StorageUnavailable(str(url), f"unknown storage scheme `{protocol}://` in {url}",
                                 "use a local path or an fsspec URL: s3://, gs://, abfs://, file://") from None


def check_reachable(url: str | Path) -> None:
    """Raise StorageUnavailable when ``url``'s scheme cannot be used here (nothing is
    read or written)."""
    if not is_local(url):
        filesystem(url)


# ---- reading ---------------------------------------------------------------------------------


@_oserrors
def read_bytes(url: str | Path) -> bytes:
    """The whole content of a file; FileNotFoundError when it is missing."""
    if is_local(url):
        with open(local_path(url), "rb") as fh:
            return fh.read()
    fs, path = filesystem(url)
    return fs.cat_file(path)


def read_text(url: str | Path) -> str:
    """A file's content decoded as UTF-8."""
    return read_bytes(url).decode("utf-8")


@_oserrors
def open_input(url: str | Path, mode: str = "rb", **kwargs) -> IO:
    """A file opened for reading (``"rb"``, or ``"r"`` with ``encoding``/``newline``),
    streamed from object stores rather than fetched whole; use it as a context manager."""
    if "r" not in mode or "+" in mode:
        raise ValueError(f"open_input reads only, not mode {mode!r}: write with atomic_write")
    if is_local(url):
        return open(local_path(url), mode, **kwargs)
    fs, path = filesystem(url)
    return fs.open(path, mode, **kwargs)


@_oserrors
def exists(url: str | Path) -> bool:
    """Whether a file (or, on object stores, any key under the prefix) is there."""
    if is_local(url):
        return os.path.exists(local_path(url))
    fs, path = filesystem(url)
    fs.invalidate_cache(path)  # another process may have written it since we last looked
    return fs.exists(path)


@_oserrors
def is_file(url: str | Path) -> bool:
    """Whether ``url`` is a file (not a folder or a prefix)."""
    if is_local(url):
        return os.path.isfile(local_path(url))
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    return fs.isfile(path)


@_oserrors
def listing(url: str | Path) -> list[str]:
    """The names (not paths) of the entries directly in folder ``url``, sorted; empty
    when it does not exist."""
    if is_local(url):
        try:
            return sorted(os.listdir(local_path(url)))
        except (FileNotFoundError, NotADirectoryError):
            return []
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(e.rstrip("/")) for e in entries)


def has_magic(url: str | Path) -> bool:
    """Whether ``url`` is a glob pattern (``*``, ``?`` or ``[``)."""
    return any(c in str(url) for c in "*?[")


@_oserrors
def glob(pattern: str | Path) -> list[str]:
    """The files matching glob ``pattern``, sorted, as paths or URLs of the same kind as
    the pattern (``s3://b/in/*.txt`` gives ``s3://b/in/a.txt``, ...)."""
    if is_local(pattern):
        import glob as globbing
        return sorted(p for p in globbing.glob(local_path(pattern)) if os.path.isfile(p))
    fs, path = filesystem(pattern)
    fs.invalidate_cache()
    scheme = protocol_of(pattern)
    return sorted(f"{scheme}://{p}" for p in fs.glob(path) if fs.isfile(p))


# ---- writing ---------------------------------------------------------------------------------


@_oserrors
def atomic_write(url: str | Path, data: str | bytes | list | tuple) -> str | Path:
    """Write ``data`` (text as UTF-8, bytes, or a list of bytes-like parts written one
    after another) to ``url`` so readers see the old file or the whole new one (see the
    module's docstring for how, per kind of storage). Parts reach the local disk as they
    are, without being joined first (an actor snapshot's big buffers are not copied again).

    On the local disk a symlink is followed (its target is replaced, the link stays) and an
    existing file keeps its permissions; a new file gets the usual mode (0666 less the
    umask). Parent folders are made as needed. Returns ``url`` as given."""
    if isinstance(data, str):
        parts = [data.encode("utf-8")]
    elif isinstance(data, (list, tuple)):
        parts = list(data)
    else:
        parts = [data]
    if is_local(url):
        _atomic_write_local(local_path(url), parts)
        return url
    # one PUT: an object appears whole
    raw = parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)
    fs, path = filesystem(url)
    if protocol_of(url) in OBJECT_STORES:
        fs.pipe_file(path, raw)
    else:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        _by_temporary(fs, path, lambda tmp: fs.pipe_file(tmp, raw))
    fs.invalidate_cache(path)
    return url


@_oserrors
def copy(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` a copy of file ``src`` (both on the same storage), atomically: a reader
    sees the old ``dst`` or the whole copy. On the local disk the copy is a hard link made
    under a temporary name and renamed onto ``dst`` (no byte is copied; removing ``src``
    later leaves ``dst`` whole), or a copied file where the disk has no hard links; on an
    object store a server-side copy (the key appears whole); elsewhere a copy under a
    temporary name, then a move."""
    if is_local(src) and is_local(dst):
        source, target = local_path(src), os.path.realpath(local_path(dst))
        folder = os.path.dirname(target) or "."
        tmp = os.path.join(folder, f".{os.path.basename(target)}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            try:
                os.link(source, tmp)
            except OSError as exc:
                if isinstance(exc, FileNotFoundError):
                    raise
                import shutil
                shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return
    fs, path = filesystem(src)
    _, target = filesystem(dst)
    if protocol_of(src) in OBJECT_STORES:
        fs.copy(path, target)
    else:
        _by_temporary(fs, target, lambda tmp: fs.copy(path, tmp))
    fs.invalidate_cache(target)


def _by_temporary(fs, path: str, put) -> None:
    """``put(tmp)`` writes a temporary beside ``path`` on ``fs``, which is then moved onto
    ``path``: a reader sees the old object or the whole new one. The temporary is removed
    when anything fails."""
    tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        put(tmp)
        fs.mv(tmp, path)
    except BaseException:
        _quietly_remove(fs, tmp)
        raise


@_oserrors
def read_writable(url: str | Path) -> bytearray:
    """The bytes of ``url`` in a buffer the caller may change (arrays restored from it
    stay writable). A local file is read straight into it."""
    if is_local(url):
        with open(local_path(url), "rb") as fh:
            data = bytearray(os.fstat(fh.fileno()).st_size)
            view, done = memoryview(data), 0
            while done < len(data):
                n = fh.readinto(view[done:])
                if not n:
                    break
                done += n
            return data if done == len(data) else data[:done]
    return bytearray(read_bytes(url))


@_oserrors
def write_many(items: list) -> None:
    """Write each ``(url, data)`` of ``items`` atomically (see :func:`atomic_write`; all
    on one storage), with no order between them: on an object store the PUTs run
    concurrently (an actor snapshot's changed chunks, 10 PUTs of 1 MB each)."""
    if not items:
        return
    if is_local(items[0][0]) or protocol_of(items[0][0]) not in OBJECT_STORES:
        for url, data in items:
            atomic_write(url, data)
        return
    fs, _ = filesystem(items[0][0])
    paths = {filesystem(url)[1]: bytes(data) for url, data in items}
    fs.pipe(paths)
    for path in paths:
        fs.invalidate_cache(path)


@_oserrors
def read_into(items: list) -> None:
    """Fill each ``(url, view)`` of ``items`` (a writable memoryview) with the start of
    file ``url`` (all on one storage): read straight into it from the local disk,
    fetched concurrently from an object store. FileNotFoundError when one is missing;
    OSError when one is shorter than its view."""
    if not items:
        return
    if is_local(items[0][0]):
        for url, view in items:
            with open(local_path(url), "rb") as fh:
                done = 0
                while done < len(view):
                    n = fh.readinto(view[done:])
                    if not n:
                        raise OSError(f"{url} holds {done} bytes, {len(view)} expected")
                    done += n
        return
    fs, _ = filesystem(items[0][0])
    paths = [filesystem(url)[1] for url, _ in items]
    got = fs.cat(paths, on_error="return") if len(paths) > 1 else {paths[0]: fs.cat_file(paths[0])}
    for (url, view), path in zip(items, paths):
        data = got.get(path, FileNotFoundError(url))
        if isinstance(data, Exception):
            raise data
        if len(data) < len(view):
            raise OSError(f"{url} holds {len(data)} bytes, {len(view)} expected")
        view[:] = data[:len(view)]


@_oserrors
def move(src: str | Path, dst: str | Path) -> None:
    """Put file ``src`` in place of ``dst`` (both on the same storage). On the local disk
    a rename; on an object store a server-side copy (the target key appears whole) and
    the source removed."""
    if is_local(src) and is_local(dst):
        os.replace(local_path(src), os.path.realpath(local_path(dst)))
        return
    fs, path = filesystem(src)
    _, target = filesystem(dst)
    fs.mv(path, target)
    fs.invalidate_cache(target)


@_oserrors
def make_folder(url: str | Path) -> None:
    """Make folder ``url`` and its parents; nothing to do on object stores, whose folders
    exist as soon as a key is under them."""
    if is_local(url):
        os.makedirs(local_path(url), exist_ok=True)
    elif protocol_of(url) not in OBJECT_STORES:
        fs, path = filesystem(url)
        fs.makedirs(path, exist_ok=True)


@_oserrors
def remove(url: str | Path) -> None:
    """Remove a file; nothing happens when it is not there."""
    if is_local(url):
        try:
            os.unlink(local_path(url))
        except FileNotFoundError:
            pass
        return
    fs, path = filesystem(url)
    _quietly_remove(fs, path)


@_oserrors
def remove_tree(url: str | Path) -> None:
    """Remove folder ``url`` and everything under it; nothing happens when it is not
    there."""
    if is_local(url):
        import shutil
        shutil.rmtree(local_path(url), ignore_errors=True)
        return
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    fs.invalidate_cache(path)


@_oserrors
def check_writable(url: str | Path, folder: bool = False) -> None:
    """Raise OSError (or StorageUnavailable) unless a file (``folder``: files inside
    folder) could be written at ``url``, without leaving anything: on the local disk the
    nearest existing folder must be a writable folder (nothing is made); elsewhere a small
    probe object is written and removed, so an unreachable bucket or missing credentials
    show before any work is done."""
    if is_local(url):
        path = os.path.abspath(local_path(url))
        if not folder and os.path.isdir(path):
            raise IsADirectoryError(f"{url} is a folder")
        nearest = path if folder else os.path.dirname(path)
        while not os.path.exists(nearest):
            nearest = os.path.dirname(nearest)
        if not os.path.isdir(nearest):
            raise NotADirectoryError(f"{nearest} is not a folder")
        if not os.access(nearest, os.W_OK | os.X_OK):
            raise PermissionError(f"{nearest} is not writable")
        return
    filesystem(url)  # an unknown scheme or a missing driver is named with ``url``, not the probe
    probe = join(url if folder else parent(url), f".pipec-probe-{uuid.uuid4().hex[:12]}")
    atomic_write(probe, b"")
    remove(probe)


# ---- the local disk --------------------------------------------------------------------------


def _atomic_write_local(path: str, parts: list) -> None:
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        found = os.stat(target).st_mode
    except FileNotFoundError:
        found = None
    if found is not None and (stat.S_ISCHR(found) or stat.S_ISFIFO(found) or stat.S_ISSOCK(found)
                              or stat.S_ISBLK(found)):
        # A device or a pipe (`-o /dev/null`, `/dev/stdout`, a FIFO) is written into: a
        # rename over it would put a regular file in its place (for /dev/null, the whole
        # machine's, when run as root), and "the old file or the whole new one" means
        # nothing for a stream.
        with open(target, "wb") as fh:
            for part in parts:
                fh.write(part)
        return
    mode = stat.S_IMODE(found) if found is not None else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            for part in parts:
                fh.write(part)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _quietly_remove(fs, path: str) -> None:
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    fs.invalidate_cache(path)


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race with threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022
