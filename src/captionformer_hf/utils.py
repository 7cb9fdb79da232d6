"""Small shared helpers (no torch import)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile


def configure_logging(verbose: bool = False) -> None:
    """Command-line logging: this package's messages on stderr (INFO with ``verbose``, else WARNING) and the
    verbosity of transformers and huggingface_hub set to match, through their own logging; the root logger is left
    alone, so no message is printed twice."""
    import logging

    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    level = logging.INFO if verbose else logging.WARNING
    package = logging.getLogger("captionformer_hf")
    if not any(getattr(h, "_captionformer", False) for h in package.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        handler._captionformer = True
        package.addHandler(handler)
    package.setLevel(level)
    package.propagate = False
    transformers_logging.set_verbosity(level)
    hub_logging.set_verbosity(level)


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (``os.umask`` can only set it, and
    setting it briefly would race with files created by other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, then rename. The file gets
    the permissions ``open()`` would give it (mkstemp's temporary file is private)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_writable_file(path: str | os.PathLike, argument: str = "out") -> None:
    """Raise a ``ValueError`` naming ``argument`` unless a file can be written at ``path`` (checked before long work
    starts: its folder is created if needed and a probe file is written there and removed)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise ValueError(f"`{argument}`: {path} is a directory; give a file path")
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise ValueError(f"`{argument}`: cannot write into {directory} ({error.strerror or error})") from error


def _same_file(a: str, b: str) -> bool:
    a, b = os.path.abspath(a), os.path.abspath(b)
    if a == b:
        return True
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def check_distinct_paths(outputs: dict, inputs: dict | None = None) -> None:
    """Refuse, before any work, an output path (``{argument: path}``) that is one of the inputs or another output:
    a result must never replace what it was made from, or another result."""
    outputs = {name: os.fspath(path) for name, path in outputs.items() if path is not None}
    inputs = {name: os.fspath(path) for name, path in (inputs or {}).items()
              if isinstance(path, (str, os.PathLike)) and not str(path).startswith(("http://", "https://"))}
    names = list(outputs)
    for i, name in enumerate(names):
        for source, path in inputs.items():
            if _same_file(outputs[name], path):
                raise ValueError(f"`{name}` is the input `{source}` ({path}): choose another output path")
        for other in names[i + 1 :]:
            if _same_file(outputs[name], outputs[other]):
                raise ValueError(f"`{name}` and `{other}` are the same file ({outputs[name]}): choose two paths")


class OutputLock:
    """An exclusive lock on an output (``<path>.lock``, holding the owner's pid): a second writer is refused while
    the first runs; a lock whose process is gone is taken over. Use as a context manager."""

    def __init__(self, path: str | os.PathLike, argument: str = "out"):
        self.path = os.path.abspath(os.fspath(path)) + ".lock"
        self.argument = argument
        self.held = False

    def acquire(self) -> "OutputLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    with open(self.path, encoding="ascii") as f:
                        owner = int(f.read().strip() or 0)
                except (OSError, ValueError):
                    owner = 0
                if owner and owner != os.getpid() and _alive(owner):
                    raise ValueError(f"`{self.argument}`: {self.path[:-5]} is being written by another process "
                                     f"(pid {owner}); wait for it or choose another output") from None
                try:
                    os.unlink(self.path)  # stale: its process is gone
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(str(os.getpid()))
            self.held = True
            return self
        raise ValueError(f"`{self.argument}`: cannot lock {self.path[:-5]}")

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_new_directory(path: str | os.PathLike, argument: str = "path") -> None:
    """Raise a ``ValueError`` naming ``argument`` unless ``path`` is absent or an empty folder."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ValueError(f"`{argument}`: {path} exists and is not empty")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False, argument: str = "path",
                     marker: str | None = None):
    """Yield a temporary folder beside ``path`` to write into; on success it is renamed to ``path``, on error it is
    deleted, so ``path`` is never half-written. An existing ``path`` must be empty unless ``overwrite`` (then it is
    replaced as a whole); the error names ``argument``. With ``marker`` (a file name), the folder written holds that
    file, and ``overwrite`` replaces only a folder that holds it too: one this package made, never another."""
    path = os.path.abspath(os.fspath(path))
    if not overwrite:
        check_new_directory(path, argument)
    elif marker is not None and os.path.exists(path):
        if not os.path.isdir(path):
            raise ValueError(f"`{argument}`: {path} exists and is not a folder")
        if os.listdir(path) and not os.path.isfile(os.path.join(path, marker)):
            raise ValueError(f"`{argument}`: {path} is not a folder this command wrote (no {marker} in it); "
                             "it is left alone: give another folder")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())  # as a folder made with os.makedirs (mkdtemp makes it private)
    if marker is not None:
        with open(os.path.join(tmp, marker), "w", encoding="utf-8") as f:
            f.write("written by captionformer_hf: `--overwrite` may replace this folder\n")
    try:
        yield tmp
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> None:
    """Write ``obj`` as strict JSON (``NaN`` / ``Infinity`` are refused, not written as invalid JSON) atomically."""
    try:
        text = json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError as error:
        raise ValueError(f"cannot write {os.fspath(path)}: the result holds a non-finite number ({error})") from error
    atomic_write_bytes(path, text.encode("utf-8"))
