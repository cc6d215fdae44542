"""A readers-writer lock for the index classes: many searches at once, mutations alone.

Searches only read the inverted lists, the centroids and the codebooks, and their kernels
release the GIL, so any number of them may run together. ``add``, ``remove`` and
``train`` rewrite those arrays in place (a list grows into its spare capacity, a removal
moves the last row into the hole), so a search that overlapped one could read a size
that does not match its rows yet: ids never added, duplicates, rows out of the arena.
The lock makes every search see the index wholly before or wholly after a mutation.

Writers are preferred: once a writer waits, new readers queue behind it, so a stream of
searches cannot starve an ``add``. A thread that already holds the read lock may take
it again (a search that calls another reading method must not queue behind a writer
waiting for that same search); asking for the write lock while holding the read lock
raises instead of deadlocking. The lock is renewed in a forked child, where a thread of
the parent that held it no longer exists.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref

__all__ = ["RWLock", "reading", "writing"]

_LOCKS: "weakref.WeakSet[RWLock]" = weakref.WeakSet()


class RWLock:
    """Writer-preferring readers-writer lock; reads re-enter per thread."""

    def __init__(self):
        self._reset()
        _LOCKS.add(self)

    def _reset(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0          # threads inside a read section
        self._writer = None        # ident of the thread inside the write section
        self._writer_depth = 0
        self._writers_waiting = 0
        self._local = threading.local()

    def _depth(self) -> int:
        return getattr(self._local, "depth", 0)

    def acquire_read(self) -> None:
        local = self._local
        depth = getattr(local, "depth", 0)
        if depth or self._writer == threading.get_ident():
            # Already inside: a read within a read or within this thread's own write.
            local.depth = depth + 1
            return
        with self._cond:
            while self._writer is not None or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        local.depth = 1

    def release_read(self) -> None:
        local = self._local
        local.depth -= 1
        if local.depth or self._writer == threading.get_ident():
            return
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    @contextlib.contextmanager
    def read(self):
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextlib.contextmanager
    def write(self):
        me = threading.get_ident()
        if self._writer == me:
            self._writer_depth += 1
            try:
                yield
            finally:
                self._writer_depth -= 1
            return
        if self._depth():
            raise RuntimeError("an index cannot be modified from inside one of its own "
                               "searches on the same thread")
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = me
            self._writer_depth = 1
        try:
            yield
        finally:
            with self._cond:
                self._writer = None
                self._writer_depth = 0
                self._cond.notify_all()


def _renew_after_fork():
    for lock in list(_LOCKS):
        lock._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_after_fork)


def reading(method):
    """Run an index method under its read lock (``self._rw``)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        lock = self._rw
        lock.acquire_read()
        try:
            return method(self, *args, **kwargs)
        finally:
            lock.release_read()
    return wrapper


def writing(method):
    """Run an index method under its write lock (``self._rw``)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._rw.write():
            return method(self, *args, **kwargs)
    return wrapper
