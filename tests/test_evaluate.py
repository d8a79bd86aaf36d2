from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fewshot.algorithms.protonet import ProtoNet
from fewshot.evaluate import evaluate, mean_ci95
from fewshot.models.conv4 import Conv4


def test_mean_ci95_is_1_96_sample_std_over_sqrt_n():
    scores = [0.8, 0.9, 1.0, 0.7, 0.95]
    mean, ci = mean_ci95(scores)
    assert mean == pytest.approx(np.mean(scores))
    assert ci == pytest.approx(1.96 * np.std(scores, ddof=1) / math.sqrt(5))
    assert math.isnan(mean_ci95([0.5])[1])
    with pytest.raises(ValueError):
        mean_ci95([])


def test_same_seed_same_episodes_and_scores(blobs):
    torch.manual_seed(0)
    model = Conv4(hidden=8)
    a = evaluate(ProtoNet(), model, blobs, ways=5, shots=1, queries=3, episodes=30, seed=4, progress=False)
    b = evaluate(ProtoNet(), model, blobs, ways=5, shots=1, queries=3, episodes=30, seed=4, progress=False)
    c = evaluate(ProtoNet(), model, blobs, ways=5, shots=1, queries=3, episodes=30, seed=5, progress=False)
    assert a.accuracies == b.accuracies and len(a.accuracies) == 30
    assert a.accuracies != c.accuracies
    assert a.mean == pytest.approx(np.mean(a.accuracies))
    assert a.ci95 == pytest.approx(1.96 * np.std(a.accuracies, ddof=1) / math.sqrt(30))
    assert "5-way 1-shot" in str(a)


def test_evaluate_defaults_to_600_episodes_and_restores_training_mode(blobs):
    model = nn.Flatten()  # pixel-space ProtoNet: no parameters at all
    model.train()
    r = evaluate(ProtoNet(), model, blobs, ways=3, shots=1, queries=2, progress=False)
    assert r.episodes == 600 and len(r.accuracies) == 600
    assert model.training
    # the blobs are easy in pixel space: nearest class mean is close to perfect
    assert r.mean > 0.9
