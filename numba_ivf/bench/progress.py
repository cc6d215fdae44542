"""A tiny progress bar on stderr (no tqdm dependency).

Quiet when the stream is not a terminal (logs and CI stay clean) unless ``enabled=True``
asks for it; redraws at most ten times a second so it never costs measurable time.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]

_MIN_REDRAW_S = 0.1
_BAR_WIDTH = 24


class Progress:
    """Progress bar for a known number of steps.

    Parameters
    ----------
    total : int
        Number of steps (0 or less draws a spinner-less counter).
    desc : str
        Label printed before the bar.
    enabled : bool, optional
        Force the bar on (True) or off (False). Default: on when ``stream`` is a TTY.
    stream : file-like, default sys.stderr

    Examples
    --------
    >>> with Progress(3, "sweep", enabled=False) as bar:
    ...     for _ in range(3):
    ...         bar.update()
    """

    def __init__(self, total: int, desc: str = "", *, enabled: bool | None = None,
                 stream=None):
        self.total = int(total)
        self.desc = desc
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty()) if callable(isatty) else False
        self.enabled = enabled
        self.done = 0
        self.postfix = ""
        self._t0 = time.perf_counter()
        self._last = 0.0
        self._closed = False
        self._width = 0
        self._shown = None

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        """Advance by ``n`` steps; ``postfix`` replaces the text after the bar."""
        self.done += n
        if postfix is not None:
            self.postfix = postfix
        self._draw(force=self.done >= self.total)

    def set(self, done: int, postfix: str | None = None) -> None:
        """Set the number of finished steps."""
        self.update(done - self.done, postfix)

    def _line(self) -> str:
        elapsed = time.perf_counter() - self._t0
        if self.total > 0:
            frac = min(max(self.done / self.total, 0.0), 1.0)
            filled = int(round(frac * _BAR_WIDTH))
            bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
            line = f"{self.desc} [{bar}] {self.done}/{self.total} {elapsed:6.1f}s"
        else:
            line = f"{self.desc} {self.done} {elapsed:6.1f}s"
        if self.postfix:
            line += f" {self.postfix}"
        return line

    def _draw(self, force: bool = False) -> None:
        if not self.enabled or self._closed:
            return
        now = time.perf_counter()
        if not force and now - self._last < _MIN_REDRAW_S:
            return
        self._last = now
        line = self._line()
        if line == self._shown:
            return
        self._shown = line
        pad = max(self._width - len(line), 0)
        self._width = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self._closed:
            return
        if self.enabled:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
        self._closed = True

    def __enter__(self):
        self._draw(force=True)
        return self

    def __exit__(self, *exc) -> None:
        self.close()
