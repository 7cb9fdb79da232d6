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


def check_new_directory(path: str | os.PathLike, argument: str = "path") -> None:
    """Raise a ``ValueError`` naming ``argument`` unless ``path`` is absent or an empty folder."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ValueError(f"`{argument}`: {path} exists and is not empty")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False, argument: str = "path"):
    """Yield a temporary folder beside ``path`` to write into; on success it is renamed to ``path``, on error it is
    deleted, so ``path`` is never half-written. An existing ``path`` must be empty unless ``overwrite`` (then it is
    replaced as a whole); the error names ``argument``."""
    path = os.path.abspath(os.fspath(path))
    if not overwrite:
        check_new_directory(path, argument)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())  # as a folder made with os.makedirs (mkdtemp makes it private)
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
