"""Many processes, one run: ``torchrun`` with gloo on the CPU, one thread per process.

Two processes must train the weights one process trains over the same tasks (each takes a contiguous block of a
step's tasks, one all-reduce sums the gradients); a killed process must stop the run with a message and leave a
run directory that ``--resume`` finishes; two "machines" (two torchrun commands meeting at a c10d rendezvous on
127.0.0.1) must work like two processes of one.

Plain SGD in these runs: Adam divides each step by the gradient's own size, which turns the float rounding of a
different summation order into steps of the learning rate's size where a gradient is zero in exact arithmetic
(conv biases before BatchNorm); SGD shows the averaging itself. Threads are pinned to one per process on both
sides: conv4's max-pooling picks among near-equal values, so a different thread count (another summation order)
can route a gradient through another pixel.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot import io
from fewshot.config import TrainConfig
from fewshot.distributed import World
from fewshot.train import Trainer

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
COMMON = dict(steps=4, val_every=0, log_every=2, optimizer="sgd", outer_lr=0.05, threads=1, seed=5, hidden=8)
EPISODES = dict(ways=3, shots=1, queries=2, tasks_per_step=5)  # 5 tasks: blocks of 2 and 3


def cases(table: Path) -> dict[str, dict]:
    return {
        "maml": dict(algorithm="maml", inner_lr=0.1, route="loop", **EPISODES, **COMMON),
        "fomaml": dict(algorithm="fomaml", inner_lr=0.1, **EPISODES, **COMMON),
        "reptile": dict(algorithm="reptile", inner_lr=0.1, inner_steps=2, **EPISODES, **COMMON),
        "protonet": dict(algorithm="protonet", **EPISODES, **COMMON),
        "baseline": dict(
            algorithm="baseline", dataset="table", data_root=str(table), batch_size=15, **COMMON
        ),
    }


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(10, 6)) * 2
    rows = ["label," + ",".join(f"f{j}" for j in range(6))]
    rows += [
        f"k{c}," + ",".join(f"{v:.5f}" for v in centres[c] + rng.normal(size=6))
        for c in range(10)
        for _ in range(8)
    ]
    path = tmp_path_factory.mktemp("table") / "t.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def params(path: Path) -> dict[str, torch.Tensor]:
    """The trained parameters of a run (BatchNorm running statistics left out: each process saw its own tasks)."""
    return {
        k: v
        for k, v in io.load_tensors(path / "model.safetensors").items()
        if "running" not in k and "num_batches" not in k
    }


def test_blocks_cover_every_task_once_in_order():
    for n in range(0, 40):
        for size in (1, 2, 3, 8):
            blocks = [World(r, size).block(n) for r in range(size)]
            assert [i for b in blocks for i in b] == list(range(n))


def test_two_processes_train_the_weights_of_one(table, tmp_path, one_thread):
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases(table)))
    cmd = [*TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()),
           str(Path(__file__).parent / "distributed_worker.py"), str(spec), str(tmp_path / "two")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, settings in cases(table).items():
        Trainer(TrainConfig.of(**settings), tmp_path / "one" / name, progress=False).run()
        one, two = params(tmp_path / "one" / name), params(tmp_path / "two" / name)
        assert one.keys() == two.keys()
        for k in one:
            torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=f"{name}: {k}")
        # and they learned: the weights moved from their initialisation
        assert any(not torch.equal(v, Trainer(TrainConfig.of(**settings), tmp_path / "init" / name,
                                               progress=False).model.state_dict()[k]) for k, v in one.items())  # fmt: skip


TRAIN = ["--ways", "5", "--shots", "1", "--queries", "2", "--hidden", "8", "--tasks-per-step", "2", "--val-every", "0",
         "--log-every", "5", "--test-episodes", "0", "--quiet"]  # fmt: skip


def _last_step(run: Path) -> int:
    lines = [ln for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.endswith("}")] if (
        run / "metrics.jsonl").exists() else []  # fmt: skip
    return json.loads(lines[-1])["step"] if lines else 0


def _rank_pid(root: int, rank: int) -> int | None:
    """The pid of the process with RANK=rank among ``root``'s descendants."""
    todo, seen = [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return pid
        except OSError:
            continue
    return None


@pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="finds the rank's process through /proc (Linux)"
)
@pytest.mark.parametrize(
    "rank, sig", [(1, signal.SIGKILL), (0, signal.SIGTERM)], ids=["peer-killed", "sigterm"]
)
def test_a_killed_process_stops_the_run_with_a_message_and_resume_finishes_it(tmp_path, rank, sig):
    # a SIGKILLed peer, or torchrun's SIGTERM reaching rank 0 at any point of its loop (not only inside a step)
    run = tmp_path / "run"
    cmd = [*TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "fewshot", "train"]
    proc = subprocess.Popen([*cmd, "--run-dir", str(run), "--steps", "400", *TRAIN], env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 120
    while _last_step(run) < 20 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    victim = _rank_pid(proc.pid, rank)
    assert victim is not None and proc.poll() is None
    os.kill(victim, sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    said = [ln for ln in err.splitlines() if ln.startswith("fewshot: error:")]
    assert len(said) == 1 and "a process of this distributed run stopped at step" in said[0], err[-2000:]
    assert f"--resume {run}" in said[0]
    stopped = _last_step(run)
    assert 20 <= stopped < 400
    if rank == 0:
        return  # resuming is the same either way
    resumed = subprocess.run([*cmd, "--resume", str(run), "--test-episodes", "0", "--quiet"], env=env(),
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _last_step(run) == 400 and f"resuming protonet in {run}" in resumed.stdout


def test_two_machines_meet_at_a_c10d_rendezvous(tmp_path, one_thread):
    settings = dict(algorithm="protonet", **EPISODES, **COMMON)
    argv = ["--run-dir", str(tmp_path / "two-nodes"), "--test-episodes", "0", "--quiet"] + [
        f"--{k.replace('_', '-')}={v}" for k, v in settings.items()
    ]
    port = free_port()
    nodes = [
        subprocess.Popen([*TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                          "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "fewshot-test", "-m", "fewshot",
                          "train", *argv], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [n.communicate(timeout=300) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], [e[-2000:] for _, e in outputs]
    assert sum("fewshot: training protonet" in o for o, _ in outputs) == 1  # rank 0 alone reports
    Trainer(TrainConfig.of(**settings), tmp_path / "one", progress=False).run()
    one, two = params(tmp_path / "one"), params(tmp_path / "two-nodes")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=k)
