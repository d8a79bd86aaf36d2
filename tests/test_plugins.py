"""Third-party algorithms: one declared in a test file (or in another package) works through every command.

The algorithm below is written here, outside fewshot, on the public contract only: a nearest-centroid learner
in a learned linear embedding of the raw pixels. Registered with ``fewshot.registry.register`` it trains, tests,
compares and predicts through the CLI; declared in the ``fewshot.algorithms`` entry-point group of an installed
distribution, a fresh ``python -m fewshot`` finds it without any registration call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import write_image_folder
from fewshot.cli import main

PLUGIN = '''
from dataclasses import dataclass

import torch
from torch import nn

from fewshot.algorithms.base import Algorithm, AlgorithmSpec, call, group_sum, setting


@dataclass(frozen=True)
class Centroid(Algorithm):
    """Nearest class centroid in the model's embedding; logits are minus squared distances times temperature."""

    temperature: float = 1.0

    def adapt(self, model, params, support, ways):
        z = call(model, params, support.x)  # (n_support, d)
        counts = torch.bincount(support.y, minlength=ways).to(z.dtype)
        return group_sum(z, support.y, ways) / counts[:, None]  # (ways, d)

    def predict(self, model, params, state, x):
        return -self.temperature * torch.cdist(call(model, params, x), state).square()  # (n, ways)


@dataclass(frozen=True)
class CentroidSettings:
    temperature: float = setting(1.0, "multiplies the squared distances before the softmax")


def network(request, settings):
    pixels = request.in_features * (request.image_size ** 2 if request.data == "images" else 1)
    return nn.Sequential(nn.Flatten(), nn.Linear(pixels, 16))


SPEC = AlgorithmSpec(
    name="centroid",
    summary="nearest class centroid in a learned linear embedding of the raw input (a test plugin)",
    build=lambda s, testing: Centroid(s.temperature),
    model=network,
    settings=CentroidSettings,
)
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The plugin as an installed distribution: a module and its dist-info with the entry point."""
    root = tmp_path_factory.mktemp("site")
    (root / "centroid_plugin.py").write_text(textwrap.dedent(PLUGIN))
    info = root / "centroid_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: centroid-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[fewshot.algorithms]\ncentroid = centroid_plugin:SPEC\n")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("data") / "images", classes=15, per_class=6)


@pytest.fixture
def registered(plugin, monkeypatch):
    from fewshot import registry

    monkeypatch.syspath_prepend(str(plugin))
    import centroid_plugin

    registry.register(centroid_plugin.SPEC)
    yield centroid_plugin.SPEC
    registry.unregister("centroid")


def test_registered_algorithm_trains_tests_compares_and_predicts(registered, images, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--algorithm", "centroid", "--dataset", "folder", "--data-root", str(images), "--ways", "3",
            "--shots", "2", "--queries", "2", "--steps", "20", "--val-every", "10", "--val-ways", "3",
            "--val-shots", "1", "--val-episodes", "5", "--temperature", "0.5", "--test-queries", "3", "--test-episodes", "20",
            "--test-ways", "3", "--test-shots", "1", "--quiet", "--run-dir", str(run)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3-way 1-shot" in out
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["algorithm"] == "centroid" and config["temperature"] == 0.5
    assert (
        main(["train", "--algorithm", "centroid", "--inner-lr", "0.1", "--run-dir", str(tmp_path / "x")]) == 2
    )
    assert "--inner-lr is not used by centroid" in capsys.readouterr().err

    assert main(["eval", str(run), "--ways", "3", "--shots", "1", "3", "--episodes", "10", "--quiet"]) == 0
    assert "3-way 3-shot" in capsys.readouterr().out

    out_dir = tmp_path / "cmp"
    argv = ["compare", str(run), f"nn={run}:nn", "pixel-nn", "--ways", "3", "--shots", "1", "--episodes", "10",
            "--queries", "3", "--out", str(out_dir), "--no-plots", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    rows = {r["method"]: r for r in json.loads((out_dir / "compare_3w1s.json").read_text())["rows"]}
    assert rows["run"]["algorithm"] == "Centroid" and 0.0 <= rows["run"]["mean"] <= 1.0
    capsys.readouterr()

    support = tmp_path / "support"
    for c in ("c00", "c01", "c02"):
        (support / c).mkdir(parents=True)
        for f in sorted((images / c).iterdir())[:2]:
            (support / c / f.name).write_bytes(f.read_bytes())
    queries = [str(sorted((images / c).iterdir())[-1]) for c in ("c00", "c01", "c02")]
    assert main(["predict", str(run), "--support", str(support), "--query", *queries, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["classes"] == ["c00", "c01", "c02"] and len(result["predictions"]) == 3
    for p in result["predictions"]:
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5
    # the blobs are easy: each query is labelled with its own class
    assert [p["label"] for p in result["predictions"]] == ["c00", "c01", "c02"]


def test_registering_a_taken_name_is_refused(registered):
    from fewshot import registry
    from fewshot.algorithms import protonet

    with pytest.raises(ValueError, match="registered already"):
        registry.register(protonet.SPEC.__class__(**{**protonet.SPEC.__dict__, "summary": "another"}))


def test_entry_point_plugin_works_in_a_fresh_python_m_fewshot(plugin, images, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run(
        [sys.executable, "-m", "fewshot", "list"], capture_output=True, text=True, env=env
    )
    assert listed.returncode == 0, listed.stderr
    assert "centroid" in listed.stdout and "test plugin" in listed.stdout
    argv = [sys.executable, "-m", "fewshot", "train", "--algorithm", "centroid", "--dataset", "folder", "--data-root",
            str(images), "--ways", "3", "--shots", "1", "--queries", "2", "--steps", "3", "--val-every", "0",
            "--test-episodes", "5", "--test-queries", "3", "--test-ways", "3", "--test-shots", "1", "--quiet", "--run-dir",
            str(tmp_path / "run")]  # fmt: skip
    trained = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert trained.returncode == 0, trained.stderr
    assert "3-way 1-shot" in trained.stdout
    help_text = subprocess.run([sys.executable, "-m", "fewshot", "train", "--help"], capture_output=True, text=True,
                               env=env).stdout  # fmt: skip
    assert "settings of centroid" in help_text and "--temperature" in help_text
