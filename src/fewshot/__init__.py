"""fewshot: meta-learning that works on real data.

The public API, in one place:

    Task, Split, EpisodeSampler     tasks as values; N-way K-shot episodes, reproducible per (seed, episode)
    ProtoNet                        Prototypical Networks (Snell et al. 2017)
    Conv4                           the standard four-block backbone
    evaluate, EvalResult            per-episode accuracies, mean and 95% confidence interval
    omniglot                        Omniglot (Lake et al. 2015), embedded, from a path, or downloaded
"""

__version__ = "0.1.0"

from fewshot.algorithms.protonet import ProtoNet
from fewshot.evaluate import EvalResult, evaluate
from fewshot.models.conv4 import Conv4
from fewshot.tasks.episodes import EpisodeSampler, Split, Task, stack_tasks

__all__ = [
    "Conv4",
    "EpisodeSampler",
    "EvalResult",
    "ProtoNet",
    "Split",
    "Task",
    "evaluate",
    "omniglot",
    "stack_tasks",
]


def __getattr__(name: str):  # omniglot is imported on first use: it loads numpy archives lazily anyway
    if name == "omniglot":
        from fewshot.datasets.omniglot import omniglot

        return omniglot
    raise AttributeError(f"module 'fewshot' has no attribute {name!r}")
