"""Cross-process wake-ups through a touched file: the writer bumps its times, watchers hear it from inotify.

Linux inotify through ctypes (no dependency), its descriptor registered on the event loop with `add_reader`:
no thread and no timer, so a watcher that hears nothing costs nothing. `FileWatch.start` returns None where
inotify is missing (not Linux) or exhausted (the per-user instance limit), and the caller polls instead.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import struct
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_MOVE_SELF = 0x800
IN_DELETE_SELF = 0x400
IN_IGNORED = 0x8000
_WATCHED = IN_MODIFY | IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF
_GONE = IN_MOVE_SELF | IN_DELETE_SELF | IN_IGNORED
"""The watched inode no longer is the file at the path: watch the path again."""

_HEADER = struct.Struct("iIII")
"""struct inotify_event: wd, mask, cookie, len (then `len` bytes of name, none for a watched file)."""

_UNAVAILABLE = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSYS, errno.ENOSPC, errno.EINVAL)
"""inotify errors that mean "no more instances or watches here": fall back rather than fail."""


def _load_libc() -> ctypes.CDLL | None:
    """The process's C library if it offers inotify (Linux), else None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init, add, remove = libc.inotify_init1, libc.inotify_add_watch, libc.inotify_rm_watch
    except (OSError, AttributeError):
        return None
    init.argtypes, init.restype = [ctypes.c_int], ctypes.c_int
    add.argtypes, add.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int
    remove.argtypes, remove.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc


_LIBC = _load_libc()


def ensure_file(path: str) -> None:
    """Create the (empty) file if it is missing; O_CREAT without O_EXCL, so racing creators all succeed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))


def touch(path: str) -> None:
    """Tell every watcher something changed: bump the file's times (one syscall), recreating it if removed."""
    try:
        os.utime(path)
    except FileNotFoundError:
        ensure_file(path)
        os.utime(path)


class FileWatch:
    """Calls `on_change` on the event loop each time the file at `path` is touched, replaced or removed."""

    def __init__(self, libc: ctypes.CDLL, fd: int, path: str, on_change: Callable[[], None]) -> None:
        self._libc = libc
        self._fd = fd
        self._path = path
        self._on_change = on_change
        self._wd = -1
        self.loop = asyncio.get_running_loop()
        """The loop whose selector reads the descriptor."""

    @classmethod
    def start(cls, path: str, on_change: Callable[[], None]) -> FileWatch | None:
        """Watch `path` (created if missing) from the running loop; None when inotify is unavailable here.

        Errors creating the file itself (a folder that cannot exist) are raised, as a read would raise them.
        """
        if _LIBC is None:
            return None
        ensure_file(path)
        fd = _LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            _unavailable("inotify_init1", ctypes.get_errno())
            return None
        watch = cls(_LIBC, fd, path, on_change)
        try:
            watch._add()
        except OSError as error:
            os.close(fd)
            if error.errno in _UNAVAILABLE:
                _unavailable("inotify_add_watch", error.errno)
                return None
            raise
        watch.loop.add_reader(fd, watch._readable)
        return watch

    def _add(self) -> None:
        """Watch the inode now at the path, dropping the watch on a previous one."""
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(self._path), _WATCHED)
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_add_watch {self._path}: {os.strerror(code)}")
        if self._wd >= 0 and self._wd != wd:
            self._libc.inotify_rm_watch(self._fd, self._wd)  # a renamed file is still watched otherwise
        self._wd = wd

    def _readable(self) -> None:
        """Drain the queued events, re-watch a replaced file, then wake the subscribers once.

        Several touches coalesce into one wake-up; a queue overflow (IN_Q_OVERFLOW) needs nothing more.
        """
        gone = False
        try:
            while chunk := os.read(self._fd, 4096):
                gone = gone or any(wd == self._wd and mask & _GONE for wd, mask in _events(chunk))
        except BlockingIOError:
            pass
        if gone:
            self._rewatch()
        self._on_change()

    def _rewatch(self) -> None:
        """The file was removed or renamed: watch whatever file now has its name (created if missing)."""
        try:
            ensure_file(self._path)
            self._add()
        except OSError as error:  # subscribers still re-read after their backstop interval
            log.warning("eventlog_watch_lost", path=self._path, error=str(error))

    def close(self) -> None:
        """Stop reading the descriptor and close it (the loop may already be closed)."""
        if self._fd < 0:
            return
        if not self.loop.is_closed():
            self.loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1


def _events(chunk: bytes) -> list[tuple[int, int]]:
    """(watch descriptor, mask) of each inotify event in one read."""
    events, offset = [], 0
    while offset + _HEADER.size <= len(chunk):
        wd, mask, _, name_length = _HEADER.unpack_from(chunk, offset)
        events.append((wd, mask))
        offset += _HEADER.size + name_length
    return events


def _unavailable(call: str, code: int) -> None:
    """Log why inotify cannot be used here (the caller falls back to polling)."""
    log.warning("eventlog_inotify_unavailable", call=call, error=os.strerror(code))
