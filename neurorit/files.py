"""Atomic file writes: write a temp file (or folder) beside the target, then rename, so a reader (or a resumed run)
never sees a half-written file; a full disk becomes one readable ``UserError`` naming the path.

- ``atomic_write_text(path, text)`` / ``atomic_write_bytes(path, data)``: temp file unique to this process,
  fsync, rename over ``path``, fsync the folder. On failure the temp file is removed and ``path`` is untouched.
- ``atomic_dir(path)``: a context manager yielding a hidden temp folder beside ``path``; when the block ends
  without an error the folder replaces ``path`` (the old one, if any, is moved aside and then removed), else it is
  removed and ``path`` is untouched. A kill at any point leaves either the old folder, the new one, or no folder,
  never a half-written one under the name ``path``.
- ``is_disk_full(err)``, ``disk_full_error(path, err)``: recognise "no space left" / "file too large" / "quota"
  from ``OSError`` errno, or from the message of a library that lost the errno (torch.save, safetensors), and turn
  it into the one-line ``UserError``.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from typing import Iterator

from neurorit.errors import UserError

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
# what torch.save (PytorchStreamWriter) and safetensors (Rust io::Error) say when the errno does not survive
DISK_FULL_TEXT = ("no space left", "file too large", "disk quota", "storagefull", "filetoolarge",
                  "file write failed", "unexpected pos", "os error 28", "os error 27", "code: 28", "code: 27")


def is_disk_full(err: BaseException, path: str = "") -> bool:
    """Did ``err`` (or what caused it) come from a full disk, a file-size limit or a quota? With ``path``, an
    ``OSError`` / ``RuntimeError`` (what torch.save raises) while its file system has under 1 MiB free counts too."""
    if path and isinstance(err, (OSError, RuntimeError)) and free_bytes(path) < 2**20:
        return True
    while err is not None:
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return True
        if any(t in str(err).lower() for t in DISK_FULL_TEXT):
            return True
        err = err.__cause__ or err.__context__
    return False


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on the file system of ``path`` (or its nearest parent)."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path or ".")
    except OSError:
        return 2**62
    return st.f_bavail * st.f_frsize


def disk_full_error(path: str, err: BaseException, kept: str = "") -> UserError:
    """The one-line error for a write to ``path`` that hit a full disk; ``kept`` says what is still intact."""
    reason = next((os.strerror(e.errno) for e in _chain(err) if isinstance(e, OSError) and e.errno), None)
    if not reason and free_bytes(path) < 2**20:
        reason = os.strerror(errno.ENOSPC)
    if not reason:
        text = str(err).strip()
        reason = text.splitlines()[0][:160] if text else "write failed"
    note = f"; {kept}" if kept else "; nothing already written was replaced"
    return UserError(f"could not write {path}: {reason} (disk full or file size limit){note}. Free space (or "
                     f"point runtime.output_dir elsewhere) and re-run the same command")


def _chain(err: BaseException):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    except FileNotFoundError:
        pass


def atomic_write_bytes(path: str, data: bytes) -> str:
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)
        if is_disk_full(err):
            raise disk_full_error(path, err, f"{path} was left as it was") from err
        raise
    _fsync_dir(folder)
    return path


def atomic_write_text(path: str, text: str) -> str:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_figure(fig, path: str, dpi: int = 110) -> str:
    """Write a matplotlib figure as PNG (atomically), then close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def partial_dir(path: str) -> str:
    """The temp folder ``atomic_dir(path)`` writes into (hidden, beside ``path``, unique to this process)."""
    path = os.path.normpath(path)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial.{os.getpid()}")


def _stale(path: str) -> list[str]:
    path = os.path.normpath(path)
    parent, base = os.path.dirname(path) or ".", os.path.basename(path)
    if not os.path.isdir(parent):
        return []
    return [os.path.join(parent, n) for n in os.listdir(parent)
            if n.startswith(f".{base}.partial.") or n.startswith(f".{base}.old.")]


@contextlib.contextmanager
def atomic_dir(path: str, kept: str = "") -> Iterator[str]:
    """Yield a temp folder; on success it becomes ``path`` (replacing the old folder), on error it is removed.

    Leftovers of a killed earlier attempt (``.<name>.partial.*``, ``.<name>.old.*``) are removed first. A full disk
    while writing becomes a ``UserError`` naming ``path`` (``kept`` says what is still intact)."""
    path = os.path.normpath(path)
    for leftover in _stale(path):
        _remove(leftover)
    tmp = partial_dir(path)
    try:
        os.makedirs(tmp)
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
    except BaseException as err:
        _remove(tmp)
        if isinstance(err, Exception) and not isinstance(err, UserError) and is_disk_full(err):
            raise disk_full_error(path, err, kept or f"{path} was left as it was") from err
        raise
    old = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.old.{os.getpid()}")
    if os.path.lexists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))
    _remove(old)
