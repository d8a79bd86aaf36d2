"""Runs that survive: kill -9 mid-run, resume, and reach the very weights of an uninterrupted run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from fewshot import io
from fewshot.cli import main
from fewshot.train import TrainConfig, Trainer

TINY = ["--ways", "5", "--shots", "1", "--queries", "3", "--hidden", "8", "--log-every", "5", "--val-every", "40",
        "--val-episodes", "4", "--threads", "1", "--test-episodes", "0", "--quiet"]  # fmt: skip


def _train(run: Path, steps: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fewshot.cli", "train", "--run-dir", str(run), "--steps", str(steps), *TINY]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _last_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = [ln for ln in path.read_text().splitlines() if ln.endswith("}")]
    return json.loads(lines[-1])["step"] if lines else 0


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return io.load_tensors(path)


def test_kill_9_then_resume_gives_bit_identical_weights(tmp_path):
    steps = 240
    whole = _train(tmp_path / "whole", steps)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()

    run = tmp_path / "killed"
    proc = _train(run, steps)
    deadline = time.time() + 300
    while _last_step(run) < 60 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up
    proc.wait()
    killed_at = _last_step(run)
    assert 60 <= killed_at < steps, f"the run was not stopped mid-way (last logged step {killed_at})"
    assert main(["train", "--resume", str(run), "--quiet", "--test-episodes", "0"]) == 0

    a, b = _weights(tmp_path / "whole" / "model.safetensors"), _weights(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    best_a, best_b = _weights(tmp_path / "whole" / "best.safetensors"), _weights(run / "best.safetensors")
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    ma, mb = io.read_jsonl(tmp_path / "whole" / "metrics.jsonl"), io.read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in ma] == [m["step"] for m in mb]  # no record lost or repeated
    assert [m["loss"] for m in ma] == [m["loss"] for m in mb]


def test_resume_restores_meta_parameters_optimizer_and_schedule(tmp_path):
    config = TrainConfig.of(
        algorithm="mamlpp", dataset="sinusoid", shots=5, queries=5, tasks_per_step=4, inner_steps=2, inner_lr=0.01,
        steps=20, log_every=5, val_every=0, lr_schedule="cosine", epoch_steps=5, threads=1,
    )  # fmt: skip
    whole = Trainer(config, tmp_path / "whole", progress=False)
    whole.run()
    half = Trainer(dataclasses.replace(config, steps=20), tmp_path / "half", progress=False)
    half.config = dataclasses.replace(config, steps=10)  # stop at 10 as if killed after that log
    half.run()
    resumed = Trainer.resumed(tmp_path / "half", progress=False)
    assert resumed.config.steps == 10
    resumed.config = config  # same settings, the full length
    resumed.run()
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(whole.extra[k], resumed.extra[k]) for k in whole.extra)
    assert whole.scheduler.get_last_lr() == resumed.scheduler.get_last_lr()


def test_resume_refuses_other_settings_and_missing_runs(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "not a fewshot run directory" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--shots", "5"]) == 2
    assert "drop --shots" in capsys.readouterr().err


def test_resume_of_adml_and_leo_reaches_the_uninterrupted_weights(tmp_path):
    """ADML's attacks and LEO's step-seeded noise and dropout are functions of the step: a resumed run draws the
    same ones as an uninterrupted run."""
    import numpy as np

    g = np.random.default_rng(0)
    table = tmp_path / "t.npz"
    np.savez(table, x=g.normal(size=(240, 6)) + np.repeat(g.normal(size=(20, 6)) * 3, 12, 0),
             y=np.repeat(np.arange(20), 12))  # fmt: skip
    cases = {
        "adml": dict(algorithm="adml", ways=3, shots=1, queries=2, hidden=8, tasks_per_step=2, attack="pgd",
                     epsilon=0.1, attack_steps=2),
        "leo": dict(algorithm="leo", dataset="table", data_root=str(table), ways=3, shots=2, queries=2,
                    tasks_per_step=3, latent_dim=4, inner_steps=2, finetune_steps=1),
    }  # fmt: skip
    for name, settings in cases.items():
        config = TrainConfig.of(**settings, steps=8, log_every=2, val_every=0, threads=1)
        whole = Trainer(config, tmp_path / f"{name}-whole", progress=False)
        whole.run()
        half = Trainer(config, tmp_path / f"{name}-half", progress=False)
        half.config = dataclasses.replace(config, steps=4)  # stop at 4 as if killed after that log
        half.run()
        resumed = Trainer(config, tmp_path / f"{name}-half", progress=False, resume=True)
        resumed.run()
        logged = [m["step"] for m in io.read_jsonl(tmp_path / f"{name}-half" / "metrics.jsonl")]
        assert logged == [2, 4, 6, 8], logged  # it went on from step 4: nothing repeated
        a, b = whole.model.state_dict(), resumed.model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
        fresh = {k: v for k, v in a.items() if not torch.equal(v, half.model.state_dict()[k])}
        assert fresh, f"{name}: the last 4 steps changed nothing"
