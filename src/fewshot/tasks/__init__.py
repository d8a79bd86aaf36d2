"""Tasks as values and the samplers that produce them."""

from fewshot.tasks.episodes import EpisodeSampler, Split, Task, stack_tasks

__all__ = ["EpisodeSampler", "Split", "Task", "stack_tasks"]
