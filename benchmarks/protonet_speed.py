"""ProtoNet training-episode speed: fewshot against easyfsl 1.5.0, measured side by side in one run.

    .venv/bin/python benchmarks/protonet_speed.py            # 5 rounds x 30 timed steps (run it alone)
    .venv/bin/python benchmarks/protonet_speed.py --quick    # 1 round x 5 steps, a smoke check

One *episode* is a full ProtoNet training step: embed support and query, prototypes, cross-entropy on the
query set, backward, Adam step. Workloads: Omniglot-shaped inputs (1 x 28 x 28, random, from a seeded
generator, identical for every contender; a few distinct episodes, cycled), 5-way 5-shot with 15 queries per
class and 60-way 5-shot with 5.

Contenders, each in its own subprocess:

* ``easyfsl``: ``easyfsl.methods.PrototypicalNetworks`` on a plain ``nn.Sequential`` conv4, trained the way
  easyfsl's docs do (``process_support_set``, ``model(query_images)``), run in ``benchmarks/.venv-peers``
  (created on first use by ``benchmarks/peers/setup_env.py``; easyfsl is never a dependency of fewshot);
  see ``benchmarks/peers/easyfsl_protonet_step.py``.
* ``fewshot_fp32``, ``fewshot_fp32_cl``, ``fewshot_bf16_cl``: ``task_loss(ProtoNet(), Conv4(), ...)`` in
  fewshot's own environment (the interpreter running this script), in the default memory format, in
  channels_last, and in channels_last under bfloat16 autocast (the headline configuration).

Every subprocess gets the same environment (the same ``GLIBC_TUNABLES`` allocator setting, ``--allocator``)
and the same number of torch threads. Contenders are interleaved: each round runs every contender on each
workload, and the order rotates from round to round, so machine noise falls on all of them alike. The figure
reported is the median per-episode time over all timed steps of all rounds; the speed-up is
easyfsl's median divided by fewshot's.

Results: ``benchmarks/results/protonet_speed.json`` (``protonet_speed_quick.json`` for ``--quick``), written
atomically, and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER_SCRIPT = HERE / "peers" / "easyfsl_protonet_step.py"
RESULTS = HERE / "results"

TUNED_ALLOCATOR = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184"

WORKLOADS: dict[str, dict[str, int]] = {
    "omniglot_5w5s15q": {"ways": 5, "shots": 5, "queries": 15},
    "omniglot_60w5s5q": {"ways": 60, "shots": 5, "queries": 5},
}
# fewshot configurations: (channels_last, bf16 autocast)
FEWSHOT_CONFIGS: dict[str, tuple[bool, bool]] = {
    "fewshot_fp32": (False, False),
    "fewshot_fp32_cl": (True, False),
    "fewshot_bf16_cl": (True, True),
}
PEER = "easyfsl"
CONTENDERS = (PEER, *FEWSHOT_CONFIGS)
HEADLINE = "fewshot_bf16_cl"
COLUMNS = {
    PEER: "easyfsl ms",
    "fewshot_fp32": "fewshot fp32 ms",
    "fewshot_fp32_cl": "fewshot channels_last ms",
    "fewshot_bf16_cl": "fewshot bf16+channels_last ms",
}


# ----------------------------------------------------------------------------------------------------
# the fewshot side (runs in a subprocess: this file with --worker)


def fewshot_worker(args: argparse.Namespace) -> None:
    import torch

    import fewshot
    from fewshot import Conv4, ProtoNet, Split, Task
    from fewshot.algorithms.base import parameters_of, task_loss

    channels_last, bf16 = FEWSHOT_CONFIGS[args.worker]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    side, ways = args.image_size, args.ways
    ys = torch.arange(ways).repeat_interleave(args.shots)
    yq = torch.arange(ways).repeat_interleave(args.queries)
    # the same episodes, drawn in the same order, as easyfsl_protonet_step.py
    tasks, checksum = [], 0.0
    for _ in range(args.episodes):
        xs = torch.randn(ways * args.shots, 1, side, side, generator=gen)
        xq = torch.randn(ways * args.queries, 1, side, side, generator=gen)
        checksum += float(xs.double().sum() + xq.double().sum())
        tasks.append(
            Task(
                Split(xs.contiguous(memory_format=fmt), ys), Split(xq.contiguous(memory_format=fmt), yq), ways
            )
        )

    model = Conv4(image_size=side).to(memory_format=fmt)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(i: int) -> torch.Tensor:
        task = tasks[i % len(tasks)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, logits = task_loss(ProtoNet(), model, parameters_of(model), task)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    for i in range(args.warmup):
        step(i)
    times, losses = [], []
    for i in range(args.warmup, args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = step(i)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))  # after the clock stops

    print(
        json.dumps(
            {
                "contender": args.worker,
                "times_s": times,
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
                "input_checksum": checksum,
                "threads": torch.get_num_threads(),
                "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
                "python": platform.python_version(),
                "executable": sys.executable,
                "torch": torch.__version__,
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "fewshot": fewshot.__version__,
            }
        )
    )


# ----------------------------------------------------------------------------------------------------
# the driver


def child_env(allocator: str) -> dict[str, str]:
    """The one environment every contender runs in: ours, with only the allocator setting decided here."""
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if allocator == "tuned":
        env["GLIBC_TUNABLES"] = TUNED_ALLOCATOR
    return env


def run_contender(
    contender: str, workload: dict[str, int], args: argparse.Namespace, peer_py: Path, env: dict[str, str]
) -> dict:
    common = [
        *("--ways", str(workload["ways"]), "--shots", str(workload["shots"])),
        *("--queries", str(workload["queries"]), "--steps", str(args.steps), "--warmup", str(args.warmup)),
        *("--seed", str(args.seed), "--threads", str(args.threads), "--episodes", str(args.episodes)),
    ]
    if contender == PEER:
        cmd = [str(peer_py), str(PEER_SCRIPT), *common]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", contender, *common]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{contender} failed (exit {proc.returncode}): {shlex.join(cmd)}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        raise SystemExit(f"{contender} printed no result: {shlex.join(cmd)}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpu_model": None,
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_available"] = len(os.sched_getaffinity(0))
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def git_state() -> dict:
    def git(*a: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    status = git("status", "--porcelain", "--", "src")
    return {"commit": git("rev-parse", "HEAD"), "src_modified": None if status is None else bool(status)}


def write_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summarise(per_round: list[list[float]]) -> dict:
    ms = [t * 1e3 for rnd in per_round for t in rnd]
    q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [ms[0]] * 3
    return {
        "median_ms": statistics.median(ms),
        "q1_ms": q[0],
        "q3_ms": q[2],
        "min_ms": min(ms),
        "round_medians_ms": [statistics.median(r) * 1e3 for r in per_round],
        "raw_ms": [[t * 1e3 for t in r] for r in per_round],
    }


def markdown_table(results: dict) -> str:
    head = ["workload", *COLUMNS.values(), "speed-up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results.items():
        cells = [name, *(f"{res['contenders'][c]['median_ms']:.1f}" for c in COLUMNS)]
        cells.append(f"{res['speedup'][HEADLINE]:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="ProtoNet training-episode speed, fewshot against easyfsl (interleaved rounds, medians).",
    )
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument(
        "--steps", type=int, default=30, help="timed episodes per contender per round (default 30)"
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed episodes before timing (default 3)")
    p.add_argument(
        "--allocator",
        choices=("tuned", "default"),
        default="tuned",
        help=f"glibc malloc setting of every contender: tuned (GLIBC_TUNABLES={TUNED_ALLOCATOR}, default) "
        "or glibc's default",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads for every contender (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=4, help="distinct random episodes, cycled (default 4)")
    p.add_argument(
        "--quick", action="store_true", help="1 round of 5 steps: a smoke check, not a measurement"
    )
    p.add_argument("--out", type=Path, default=None, help="results file (default benchmarks/results/...)")
    # internal: run one fewshot contender and print its JSON
    p.add_argument("--worker", choices=tuple(FEWSHOT_CONFIGS), help=argparse.SUPPRESS)
    p.add_argument("--ways", type=int, help=argparse.SUPPRESS)
    p.add_argument("--shots", type=int, help=argparse.SUPPRESS)
    p.add_argument("--queries", type=int, help=argparse.SUPPRESS)
    p.add_argument("--image-size", type=int, default=28, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 1, 5
    if min(args.rounds, args.steps, args.threads, args.episodes) < 1 or args.warmup < 0:
        p.error("--rounds, --steps, --threads and --episodes must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        fewshot_worker(args)
        return

    sys.path.insert(0, str(HERE / "peers"))
    from setup_env import ensure_peer_env

    peer_py = ensure_peer_env()
    env = child_env(args.allocator)
    out = args.out or RESULTS / ("protonet_speed_quick.json" if args.quick else "protonet_speed.json")
    command = shlex.join([os.path.relpath(sys.executable, ROOT), *sys.argv])
    print(
        f"ProtoNet episode timing: {args.rounds} round(s) x {args.steps} steps (+{args.warmup} warm-up), "
        f"allocator {args.allocator}, {args.threads} threads",
        file=sys.stderr,
        flush=True,
    )

    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load_start is not None and load_start[0] > 0.5:
        print(
            f"warning: load average {load_start[0]:.2f} over the last minute; if other work is running, "
            "timings will be noisy (run this benchmark alone)",
            file=sys.stderr,
            flush=True,
        )
    times: dict[str, dict[str, list[list[float]]]] = {w: {c: [] for c in CONTENDERS} for w in WORKLOADS}
    reports: dict[str, dict] = {}
    checksums: dict[str, float] = {}
    started = datetime.now(timezone.utc)
    for r in range(args.rounds):
        order = CONTENDERS[r % len(CONTENDERS) :] + CONTENDERS[: r % len(CONTENDERS)]
        for wname, workload in WORKLOADS.items():
            for contender in order:
                rep = run_contender(contender, workload, args, peer_py, env)
                checksums.setdefault(wname, rep["input_checksum"])
                if rep["input_checksum"] != checksums[wname]:
                    raise SystemExit(
                        f"{contender} saw different inputs on {wname}: seeded generators disagree"
                    )
                times[wname][contender].append(rep["times_s"])
                reports.setdefault(contender, rep)
                reports[contender].setdefault("losses", {}).setdefault(wname, []).append(
                    [rep["loss_first"], rep["loss_last"]]
                )
                print(
                    f"  round {r + 1}/{args.rounds}  {wname:18s} {contender:16s} "
                    f"median {statistics.median(rep['times_s']) * 1e3:8.1f} ms",
                    file=sys.stderr,
                    flush=True,
                )

    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = {}
    for wname, workload in WORKLOADS.items():
        contenders = {c: summarise(times[wname][c]) for c in CONTENDERS}
        peer_ms = contenders[PEER]["median_ms"]
        results[wname] = {
            **workload,
            "image": [1, 28, 28],
            "contenders": contenders,
            "speedup": {c: peer_ms / contenders[c]["median_ms"] for c in FEWSHOT_CONFIGS},
        }

    ours, peer = reports[HEADLINE], reports[PEER]
    data = {
        "benchmark": "ProtoNet training episode (forward support+query, loss, backward, Adam step)",
        "started_utc": started.isoformat(timespec="seconds"),
        "command": command,
        "cwd": str(ROOT),
        "quick": args.quick,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "warmup_steps": args.warmup,
        "seed": args.seed,
        "distinct_episodes": args.episodes,
        "threads": args.threads,
        "allocator": {
            "setting": args.allocator,
            "GLIBC_TUNABLES": env.get("GLIBC_TUNABLES"),
            "seen_by_contenders": {c: reports[c]["glibc_tunables"] for c in CONTENDERS},
        },
        "machine": {**machine_info(), "torch_cpu_capability": ours.get("cpu_capability")},
        # other work on the machine shows here: 1/5/15-minute load averages before and after the run
        "load_average": {"start": load_start, "end": load_end},
        "versions": {
            "python": ours["python"],
            "python_peer_env": peer["python"],
            "torch": ours["torch"],
            "torch_peer_env": peer["torch"],
            "fewshot": ours["fewshot"],
            "fewshot_git": git_state(),
            "easyfsl": peer["easyfsl"],
        },
        "interpreters": {"fewshot": ours["executable"], "easyfsl": peer["executable"]},
        "contenders": {
            PEER: "easyfsl.methods.PrototypicalNetworks(conv4 nn.Sequential): process_support_set, "
            "model(query), cross-entropy, backward, Adam; fp32, default memory format",
            "fewshot_fp32": "task_loss(ProtoNet(), Conv4(), ...), backward, Adam; fp32, default layout",
            "fewshot_fp32_cl": "same, model and inputs in channels_last",
            "fewshot_bf16_cl": "same, channels_last under torch.autocast('cpu', dtype=torch.bfloat16)",
        },
        "losses_first_last_per_round": {c: reports[c]["losses"] for c in CONTENDERS},
        "headline": HEADLINE,
        "speedup_definition": "easyfsl median episode time / fewshot median episode time",
        "workloads": results,
    }
    write_atomic(out, data)

    print(markdown_table(results))
    print(
        f"\nMedian ms per training episode over {args.rounds} interleaved round(s) x {args.steps} steps; "
        f"speed-up = easyfsl / fewshot bf16+channels_last. Allocator: {args.allocator}"
        f"{' (GLIBC_TUNABLES=' + TUNED_ALLOCATOR + ')' if args.allocator == 'tuned' else ''}; "
        f"{args.threads} torch threads; torch {ours['torch']}, easyfsl {peer['easyfsl']}."
    )
    if args.quick:
        print("--quick: a smoke check only; the numbers are not a measurement.")
    print(f"Results: {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
