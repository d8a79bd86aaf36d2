"""Time per meta-step with 1 and 2 processes (torchrun, gloo, one thread each) against one process.

    python benchmarks/distributed_speed.py [--steps 6] [--warmup 2]

Workloads: MAML 5-way 1-shot Omniglot (conv4, 32 tasks per step, 15 queries, one inner step, second order) and
ProtoNet 60-way 5-shot (conv4, 2 episodes per step so that two processes each get one). Modes, run one after
another in this one command: one process with the threads route or two intra-op threads (the package's default
on 2 cores), one process with one thread (the loop), and ``torchrun --nproc-per-node 2`` with one thread per
process. Each mode is a fresh process timing ``Trainer.guarded_step`` itself (the all-reduce included) after
warm-up steps; the two-process mode also times the all-reduce of one gradient-sized buffer alone, its share of a
step. float32 throughout. Results: benchmarks/results/distributed_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = {
    "maml-5w1s": dict(
        algorithm="maml", ways=5, shots=1, queries=15, tasks_per_step=32, inner_lr=0.4, inner_steps=1
    ),
    "protonet-60w5s": dict(algorithm="protonet", ways=60, shots=5, queries=5, tasks_per_step=2),
}
MODES = {  # name -> (processes, threads per process, route)
    "1 process, 2 threads (default)": (1, 2, "auto"),
    "1 process, 1 thread": (1, 1, "auto"),
    "2 processes x 1 thread (torchrun)": (2, 1, "auto"),
}


def worker(workload: str, threads: int, route: str, steps: int, warmup: int, out: Path) -> None:
    import torch

    from fewshot import distributed
    from fewshot.config import TrainConfig
    from fewshot.train import Trainer

    settings = WORKLOADS[workload] | dict(
        steps=steps + warmup, val_every=0, threads=threads, route=route, seed=0
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(TrainConfig.of(**settings), Path(tmp) / "run", progress=False)
        times = []
        for step in range(steps + warmup):
            if trainer.world.size > 1:
                torch.distributed.barrier()  # every process starts the step together
            start = time.perf_counter()
            trainer.guarded_step(step)
            times.append(time.perf_counter() - start)
        reduce_ms = None
        if trainer.world.size > 1:  # the all-reduce alone: one buffer of every gradient, as a step sends
            grads = [torch.randn_like(p) for p in trainer.params().values()]
            torch.distributed.barrier()
            start = time.perf_counter()
            for _ in range(20):
                distributed.sum_(grads, trainer.world)
            reduce_ms = 1000 * (time.perf_counter() - start) / 20
        if trainer.world.main:
            out.write_text(json.dumps({
                "step_ms": [1000 * t for t in times[warmup:]], "route": trainer.config.route,
                "parameters": sum(p.numel() for p in trainer.params().values()), "allreduce_ms": reduce_ms,
                "processes": trainer.world.size, "threads": torch.get_num_threads(),
            }))  # fmt: skip
        distributed.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--worker", nargs=4, metavar=("WORKLOAD", "THREADS", "ROUTE", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        workload, threads, route, out = args.worker
        worker(workload, int(threads), route, args.steps, args.warmup, Path(out))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    import numpy as np
    from common import RESULTS, header

    results = header("distributed_speed", 0, steps=args.steps, warmup=args.warmup, runs={})
    me = str(Path(__file__).resolve())
    for workload in WORKLOADS:
        for mode, (procs, threads, route) in MODES.items():
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "out.json"
                cmd = [me, "--worker", workload, str(threads), route, str(out), "--steps", str(args.steps),
                       "--warmup", str(args.warmup)]  # fmt: skip
                if procs > 1:
                    cmd = [
                        sys.executable,
                        "-m",
                        "torch.distributed.run",
                        "--nproc-per-node",
                        str(procs),
                        *cmd,
                    ]
                else:
                    cmd = [sys.executable, *cmd]
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    sys.exit(f"{workload} / {mode} failed:\n{proc.stderr[-3000:]}")
                r = json.loads(out.read_text())
            r["median_step_ms"] = float(np.median(r["step_ms"]))
            results["runs"][f"{workload} | {mode}"] = r
            print(f"{workload:15s} {mode:36s} {r['median_step_ms']:8.1f} ms/step  route {r['route']}"
                  + (f"  all-reduce {r['allreduce_ms']:.2f} ms" if r["allreduce_ms"] else ""), flush=True)  # fmt: skip
    path = RESULTS / "distributed_speed.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
