"""A readers-writer lock for the index classes: many searches at once, mutations alone.

Searches only read the inverted lists, the centroids and the codebooks, and their kernels
release the GIL, so any number of them may run together. ``add``, ``remove`` and
``train`` rewrite those arrays in place (a list grows into its spare capacity, a removal
moves the last row into the hole), so a search that overlapped one could read a size
that does not match its rows yet: ids never added, duplicates, rows out of the arena.
The lock makes every search see the index wholly before or wholly after a mutation.

Writers are preferred: once a writer waits, new readers queue behind it, so a stream of
searches cannot starve an ``add``. The lock is renewed in a forked child, where a thread
of the parent that held it no longer exists.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref

from .._threads import launch_guard

__all__ = ["RWLock", "reading", "writing"]

_LOCKS: "weakref.WeakSet[RWLock]" = weakref.WeakSet()


class RWLock:
    """Writer-preferring readers-writer lock (not re-entrant: no index method that
    takes it calls another one that does)."""

    def __init__(self):
        self._reset()
        _LOCKS.add(self)

    def _reset(self):
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0          # threads inside a read section
        self._writer = False       # a thread is inside the write section
        self._writers_waiting = 0

    # A search pays for one acquire and one release of a plain lock (~0.2 us each): the
    # one-query path takes about 15 us, so the Condition is only used to wait.
    def acquire_read(self) -> None:
        self._mutex.acquire()
        if self._writer or self._writers_waiting:
            self._mutex.release()
            with self._cond:
                while self._writer or self._writers_waiting:
                    self._cond.wait()
                self._readers += 1
            return
        self._readers += 1
        self._mutex.release()

    def release_read(self) -> None:
        with self._mutex:
            self._readers -= 1
            if not self._readers and self._writers_waiting:
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
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _renew_after_fork():
    for lock in list(_LOCKS):
        lock._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_after_fork)


def reading(method):
    """Run an index method under its read lock (``self._rw``), and under the kernel
    launch lock where the threading layer needs one (``_threads.launch_guard``)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        guard = launch_guard()
        lock = self._rw
        lock.acquire_read()
        try:
            if guard is None:
                return method(self, *args, **kwargs)
            with guard:
                return method(self, *args, **kwargs)
        finally:
            lock.release_read()
    return wrapper


def writing(method):
    """Run an index method under its write lock (``self._rw``) and the launch guard."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        guard = launch_guard()
        with self._rw.write():
            if guard is None:
                return method(self, *args, **kwargs)
            with guard:
                return method(self, *args, **kwargs)
    return wrapper
