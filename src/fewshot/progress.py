"""Progress that a terminal and a log file can both hold.

On a terminal, a tqdm bar redrawn in place. Written to a file or a pipe (CI, ``nohup``, ``make.py demo > log``),
redrawing would fill the log with carriage-return frames, so the same calls print a plain line instead, at most
every ``every`` seconds and at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm


def progress(
    iterable: Iterable[Any],
    desc: str,
    total: int | None = None,
    initial: int = 0,
    enabled: bool = True,
    leave: bool = True,
    every: float = 10.0,
) -> Any:
    """An iterable over ``iterable`` that shows progress on stderr: a bar on a terminal, lines elsewhere.

    The returned object has ``set_postfix(dict)`` like tqdm's bar; nothing is shown when ``enabled`` is False.
    """
    if not enabled or sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, initial=initial, disable=not enabled, leave=leave)
    return Lines(iterable, desc, total, initial, every)


class Lines:
    """Plain progress lines: ``desc: 120/1000 (12%), 8.1 it/s, loss=0.512`` every ``every`` seconds."""

    def __init__(
        self, iterable: Iterable[Any], desc: str, total: int | None, initial: int, every: float
    ) -> None:
        self.iterable, self.desc, self.initial, self.every = iterable, desc, initial, every
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.postfix: dict[str, Any] = {}
        self.done = initial

    def set_postfix(self, values: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.postfix = {**(values or {}), **kwargs}

    def __iter__(self) -> Iterator[Any]:
        start = last = time.monotonic()
        try:
            for item in self.iterable:
                now = time.monotonic()
                if now - last >= self.every:
                    self._line(now - start)
                    last = now
                self.done += 1  # counted when handed out: a loop that breaks after its last item is complete
                yield item
        finally:  # also when the loop breaks early (the generator is closed)
            self._line(time.monotonic() - start)

    def _line(self, seconds: float) -> None:
        of = f"/{self.total} ({100 * self.done / self.total:.0f}%)" if self.total else ""
        rate = f", {(self.done - self.initial) / seconds:.1f} it/s" if seconds > 0 else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.done}{of}{rate}{extra}", file=sys.stderr, flush=True)
