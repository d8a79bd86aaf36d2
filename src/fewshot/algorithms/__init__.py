"""One file per algorithm; all follow the adapt / predict protocol in ``base``."""

from fewshot.algorithms.base import Algorithm, parameters_of, task_loss
from fewshot.algorithms.protonet import ProtoNet

__all__ = ["Algorithm", "ProtoNet", "parameters_of", "task_loss"]
