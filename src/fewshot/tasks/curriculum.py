"""Curriculum task sampling: task difficulty that grows in stages over training steps.

A :class:`Curriculum` moves named settings of a task family from a starting value towards the run's own value by
a fixed increment per stage, one stage every ``every`` steps, and holds them there. Garg, Tsipras, Liang & Valiant
(2022, arXiv 2208.01066, section 4) train on 5 active input dimensions and 11 prompt points at first, adding 1
dimension and 2 points every 2,000 steps until 20 and 41: with one query point after the examples,
``Curriculum.parse("active=5+1,shots=10+2", 2000)``, or ``"garg"`` for short.

Any task family takes it: a frozen dataclass of settings (:class:`~fewshot.tasks.linear.FunctionTasks`,
:class:`~fewshot.tasks.regression.Sinusoid`) through :meth:`Curriculum.at`, or a plain dict of them (the
``ways``, ``shots`` and ``queries`` of classification episodes) through :meth:`Curriculum.values`. The settings at
a step are a pure function of the step, so a resumed run sees exactly the tasks the uninterrupted one would; the
trainer records the curriculum in the run's ``config.json`` and the values in force in every ``metrics.jsonl`` row.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

FIXED = ("seed", "dim")  # what a task family's settings may not change: which tasks, the network's input size
# Garg et al. 2022: 5 -> d active dimensions, prompts of 11 -> n points (10 examples and the query, 2 more a stage)
NAMED = {"garg": "active=5+1,shots=10+2"}
_NUMBER = r"[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?"
_TERM = re.compile(rf"^([a-z_]+)=([-+]?{_NUMBER})([-+]{_NUMBER})$")


@dataclass(frozen=True)
class Grow:
    """One setting's schedule: ``start`` at stage 0, then ``by`` per stage until it reaches the run's value."""

    name: str
    start: float
    by: float

    def at(self, stage: int, target: float) -> float:
        value = self.start + self.by * stage
        if self.by >= 0:  # grows up to the target (a start past it starts at the target)
            return min(value, target)
        return max(value, target)  # shrinks down to it (noise from high to the run's level, say)


@dataclass(frozen=True)
class Curriculum:
    """Settings that change in stages of ``every`` training steps.

    Args:
        grow: the schedule of each setting.
        every: training steps per stage (2,000 in Garg et al.).

    Example:
        >>> c = Curriculum.parse("garg", every=2000)
        >>> c.values({"active": 20, "shots": 40}, step=4000)       # stage 2
        {'active': 7, 'shots': 14}
        >>> c.at(FunctionTasks(dim=20, shots=40), step=4000).active  # the same, on a task family
        7
    """

    grow: tuple[Grow, ...]
    every: int

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"a curriculum needs a stage length of at least 1 step, got {self.every}")
        names = [g.name for g in self.grow]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a curriculum names each setting once, got {names}")

    @classmethod
    def parse(cls, text: str, every: int) -> Curriculum:
        """``"name=start+by,name=start-by,..."`` (or a name from :data:`NAMED`) with ``every`` steps per stage."""
        terms = NAMED.get(text.strip(), text)
        grow = []
        for term in terms.replace(" ", "").split(","):
            match = _TERM.match(term)
            try:
                grow.append(Grow(match.group(1), float(match.group(2)), float(match.group(3))))  # type: ignore[union-attr]
            except (AttributeError, ValueError):
                raise ValueError(
                    f"curriculum term {term!r} is not NAME=START+STEP (or NAME=START-STEP), e.g. "
                    f"'shots=10+2'; or name one of {sorted(NAMED)}"
                ) from None
        return cls(tuple(grow), every)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.grow)

    def stage(self, step: int) -> int:
        return step // self.every

    def values(self, targets: dict[str, Any], step: int) -> dict[str, Any]:
        """The settings in force at ``step``, given the run's own (final) ``targets``; whole numbers stay
        whole."""
        missing = [n for n in self.names if n not in targets]
        if missing:
            raise ValueError(
                f"the curriculum changes {missing}, which these tasks do not have; they have {sorted(targets)}"
            )
        out = {}
        for g in self.grow:
            target = targets[g.name]
            value = g.at(self.stage(step), target)
            out[g.name] = (
                math.floor(value) if isinstance(target, int) and not isinstance(target, bool) else value
            )
        return out

    def at(self, family: Any, step: int) -> Any:
        """``family`` (a frozen dataclass of task settings) with the settings in force at ``step``."""
        targets = {f.name: getattr(family, f.name) for f in dataclasses.fields(family)}
        numbers = {k: v for k, v in targets.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        return dataclasses.replace(family, **self.values(numbers, step))


def check(text: str, every: int, settings: dict[str, Any], start: Any = None) -> None:
    """Refuses, in one line, a curriculum that cannot apply to tasks with these ``settings`` (name -> value);
    ``start``, given the settings of the first stage, raises ValueError when they are not valid."""
    if every and not text:
        raise ValueError("--curriculum-every needs --curriculum (e.g. garg, or 'shots=10+2,active=5+1')")
    if text and not every:
        raise ValueError(
            "--curriculum needs --curriculum-every (training steps per stage; 2000 in Garg et al.)"
        )
    if not text:
        return
    curriculum = Curriculum.parse(text, every)
    fixed = [n for n in curriculum.names if n in FIXED]
    if fixed:
        raise ValueError(
            f"a curriculum cannot change {fixed}: they fix which tasks are drawn and the network's size"
        )
    first = curriculum.values(settings, 0)
    if start is not None:
        try:
            start(first)
        except ValueError as e:
            raise ValueError(f"the curriculum's first stage {first} is not valid: {e}") from None


__all__ = ["FIXED", "NAMED", "Curriculum", "Grow", "check"]
