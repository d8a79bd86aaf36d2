"""MAML meta-iteration speed and peak memory: fewshot against learn2learn 0.2.0, measured side by side in one run.

    .venv/bin/python benchmarks/maml_speed.py            # 3 interleaved rounds (run it alone on the machine)
    .venv/bin/python benchmarks/maml_speed.py --quick    # 1 round, 1 warm-up + 2 timed steps: a smoke check

One *meta-iteration* is the meta-gradient of a batch of tasks (adaptation on each support set, loss on its
query set, backward through the adaptation) followed by an Adam step. Workloads (``WORKLOADS`` in
``benchmarks/peers/l2l_maml_step.py``, which both sides import, so they draw the very same seeded data):

1. ``conv4_maml``: second-order MAML, Omniglot-shaped (1 x 28 x 28) conv4 5-way 1-shot, 15 queries per class,
   32 tasks per meta-iteration, 1 inner step with lr 0.4;
2. ``conv4_fomaml``: first-order MAML, the same workload;
3. ``sine_maml``: second-order MAML on sinusoids, MLP 1-40-40-1, K=10 support and 10 query points, 25 tasks,
   1 inner step with lr 0.01; measured at 1 thread and at ``--threads`` for every contender;
4. ``conv4_maml_10step``: workload 1 with 10 inner steps, fewshot only (time and peak memory).

Inputs are random (standard-normal images; sinusoids as in Finn et al. 2017) from a generator seeded with
``--seed``; a few distinct meta-batches are cycled. Both sides build their model right after
``torch.manual_seed(seed)`` and so start from identical weights (checked).

Contenders, each run in its own fresh subprocess:

* ``learn2learn``: ``l2l.algorithms.MAML(model, lr, first_order)``, per task ``learner = maml.clone();
  learner.adapt(support_loss); query_loss.backward()``, gradients divided by the number of tasks, Adam step
  (``benchmarks/peers/l2l_maml_step.py``, run in ``benchmarks/.venv-peers``, which
  ``benchmarks/peers/setup_env.py`` creates on first use; learn2learn is never a dependency of fewshot);
* ``fewshot_loop``, ``fewshot_threads``, ``fewshot_vmap``: ``meta_gradient(MAML(...), model,
  parameters_of(model), tasks, route=...)``, the gradients set as ``p.grad``, Adam step (``threads``: the
  tasks split between ``--threads`` Python threads with one intra-op thread each);
* ``fewshot_autograd``: ``(sum of task_loss(...) over tasks / n).backward()``, Adam step (sinusoids only);
* for conv4 also in channels_last (``_cl``: model and inputs in ``torch.channels_last``), and in bfloat16
  autocast (``_bf16``). fewshot's ``Conv4`` max-pools before its ReLU, which gives exactly the same values and
  gradients. The conv4 vmap and autograd routes were measured in the first run of this benchmark (vmap ~3x
  slower than the loop and ~10x the memory, autograd no faster than the loop and holding every task's graph),
  and are left out to keep a run under 20 minutes.

Headlines: the best float32 variant against learn2learn (float32, as it ships), and separately the best
bfloat16 variant. bfloat16 changes the numbers (its meta-gradient differs from float32 by a few percent,
reported); whether training accuracy holds with it is measured by ``benchmarks/maml_omniglot.py --bf16``.

Every subprocess gets the same environment (the same ``GLIBC_TUNABLES`` allocator setting, ``--allocator``).
Contenders are interleaved: each round runs every contender of each workload, in an order that rotates from
round to round, so machine noise falls on all of them alike. Times are medians over all timed steps of all
rounds; ``ratio`` is fewshot's median time divided by learn2learn's (lower is better), and the headline per
workload is the best fewshot variant. Peak memory is the maximum resident set size of the worker process
(``resource.getrusage``), the largest over rounds; it includes the interpreter and torch themselves (their
share is reported as ``rss_before_steps_mb``).

Correctness, checked in every run (round 1): each worker saves its initial weights and the meta-gradient of
its first meta-iteration; the driver reports the largest absolute difference of every fewshot variant from
learn2learn (for the 10-step workload: from ``fewshot_loop``); they agree when that is below 1e-4 (10 inner
steps: 1e-3 of the largest gradient entry, as float32 rounding grows with the steps).

Results: ``benchmarks/results/maml_speed.json`` (``maml_speed_quick.json`` for ``--quick``), written atomically,
and Markdown tables on stdout.
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
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER_SCRIPT = HERE / "peers" / "l2l_maml_step.py"
RESULTS = HERE / "results"
sys.path[:0] = [str(HERE), str(HERE / "peers")]

from l2l_maml_step import WORKLOADS, make_batches  # noqa: E402  (torch only)
from protonet_speed import (  # noqa: E402
    TUNED_ALLOCATOR,
    child_env,
    git_state,
    machine_info,
    summarise,
    write_atomic,
)

PEER = "learn2learn"
ROUTES = ("loop", "threads", "vmap", "autograd")
# (route, channels_last, bf16, torch.compile) per kind of workload
VARIANTS = {
    "conv4": [
        ("loop", False, False, False), ("loop", True, False, False), ("threads", True, False, False),
        ("loop", True, True, False), ("threads", True, True, False),
    ],
    "sine": [
        ("loop", False, False, False), ("vmap", False, False, False), ("vmap", False, False, True),
        ("autograd", False, False, False),
    ],
}  # fmt: skip
PEERLESS = {"conv4_maml_10step"}  # fewshot only
# the goals: fewshot time / learn2learn time at most this; for the 10-step workload, peak RSS in MiB
TIME_GOALS = {"conv4_maml": 0.5, "conv4_fomaml": 0.4, "sine_maml": 0.12}
MEMORY_GOAL_MB = {"conv4_maml_10step": 4096}
# Agreement of float32 meta-gradients: max abs difference below GRAD_TOLERANCE after one inner step. Over 10 inner
# steps at lr 0.4 float32 rounding grows (float64 runs of the loop route agree across memory layouts to ~1e-13,
# float32 ones differ from float64 by ~1e-4 per task), so there the test is max abs difference relative to the
# largest gradient entry, below GRAD_REL_TOLERANCE_MULTISTEP.
GRAD_TOLERANCE = 1e-4
GRAD_REL_TOLERANCE_MULTISTEP = 1e-3
# bfloat16 autocast rounds every activation to 8 bits of mantissa: its meta-gradient differs from float32 by a few
# percent of the largest entry. This bound only catches a wrong gradient, not rounding.
GRAD_REL_TOLERANCE_BF16 = 0.1


@dataclass(frozen=True)
class Contender:
    name: str
    library: str  # "learn2learn" or "fewshot"
    route: str | None  # fewshot: loop, threads, vmap or autograd
    channels_last: bool
    threads: int
    bf16: bool = False
    compile: bool = False


def contenders_for(workload: str, args: argparse.Namespace) -> list[Contender]:
    kind = WORKLOADS[workload]["kind"]
    thread_counts = sorted({1, args.threads}) if kind == "sine" else [args.threads]
    out = []
    for t in thread_counts:
        suffix = f"_t{t}" if len(thread_counts) > 1 else ""
        if workload not in PEERLESS:
            out.append(Contender(PEER + suffix, PEER, None, False, t))
        variants = VARIANTS[kind]
        if workload in PEERLESS:
            variants = [("loop", True, False, False), ("threads", True, False, False)]
        for route, cl, bf16, compiled in variants:
            name = f"fewshot_{route}{'_cl' if cl else ''}{'_bf16' if bf16 else ''}{'_compiled' if compiled else ''}"
            out.append(Contender(name + suffix, "fewshot", route, cl, t, bf16, compiled))
    return out


def steps_for(workload: str, args: argparse.Namespace) -> tuple[int, int]:
    """(warm-up steps, timed steps) per contender per round for this workload."""
    if WORKLOADS[workload]["kind"] == "sine":
        return max(args.warmup, 3), args.sine_steps
    if WORKLOADS[workload]["inner_steps"] > 1:
        return min(args.warmup, 1), args.long_steps
    return args.warmup, args.steps


# ----------------------------------------------------------------------------------------------------
# the fewshot side (runs in a subprocess: this file with --worker ROUTE)


def channels_last_stacked(x):
    """A copy of a stacked image batch ``(tasks, n, c, h, w)`` in which every task's slice is channels_last.

    (``torch.stack`` of channels_last tensors would return the default layout, so the layout is built here:
    memory ordered ``(tasks, n, h, w, c)``.)
    """
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def fewshot_worker(args: argparse.Namespace) -> None:
    import torch
    from l2l_maml_step import rss_mb

    import fewshot
    from fewshot.algorithms.base import parameters_of, task_loss
    from fewshot.algorithms.maml import MAML
    from fewshot.algorithms.routes import meta_gradient, task_at
    from fewshot.models import MLP, Conv4
    from fewshot.tasks.episodes import Split, Task

    w = WORKLOADS[args.workload]
    conv = w["kind"] == "conv4"
    torch.set_num_threads(args.threads)
    raw, checksum = make_batches(w, args.seed, args.batches, args.tasks)
    ways = w["ways"] if conv else 0
    batches = []
    for xs, ys, xq, yq in raw:
        if args.channels_last:
            xs, xq = channels_last_stacked(xs), channels_last_stacked(xq)
        # the stacked Task that fewshot.tasks.episodes.stack_tasks would build, with the layout kept
        batches.append(Task(Split(xs, ys), Split(xq, yq), ways))

    torch.manual_seed(args.seed)
    model = Conv4(out_features=ways, track_running_stats=False) if conv else MLP()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    algo = MAML(inner_lr=w["inner_lr"], inner_steps=w["inner_steps"], first_order=w["first_order"])
    opt = torch.optim.Adam(model.parameters(), lr=w["meta_lr"])
    initial = [p.detach().clone() for p in model.parameters()]

    def step(i: int, capture: bool = False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            return _step(i, capture)

    def _step(i: int, capture: bool = False):
        tasks = batches[i % len(batches)]
        if args.worker == "autograd":
            params = parameters_of(model)
            n = tasks.support.x.shape[0]
            loss = sum(task_loss(algo, model, params, task_at(tasks, t))[0] for t in range(n)) / n
            opt.zero_grad(set_to_none=True)
            loss.backward()
        else:
            grads, loss = meta_gradient(
                algo, model, parameters_of(model), tasks, route=args.worker, compile=args.compile
            )
            for name, p in model.named_parameters():
                p.grad = grads[name]
        captured = [p.grad.detach().clone() for p in model.parameters()] if capture else None
        opt.step()
        return loss.detach(), captured

    rss_before = rss_mb()
    times, warmup_times, losses = [], [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss, grads = step(i, capture=i == 0 and args.dump is not None)
        elapsed = time.perf_counter() - t0
        (times if i >= args.warmup else warmup_times).append(elapsed)
        losses.append(float(loss))  # after the clock stops
        if grads is not None:
            names = [name for name, _ in model.named_parameters()]
            torch.save({"names": names, "weights": initial, "grads": grads, "loss": losses[0]}, args.dump)

    print(
        json.dumps(
            {
                "contender": args.worker,
                "workload": args.workload,
                "times_s": times,
                "warmup_times_s": warmup_times,  # the first includes torch.compile's compilation
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
                "input_checksum": checksum,
                "tasks": raw[0][0].shape[0],
                "peak_rss_mb": rss_mb(),
                "rss_before_steps_mb": rss_before,
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


def run_contender(
    c: Contender,
    workload: str,
    args: argparse.Namespace,
    peer_py: Path,
    env: dict[str, str],
    dump: Path | None,
) -> dict:
    warmup, steps = steps_for(workload, args)
    common = [
        *("--workload", workload, "--steps", str(steps), "--warmup", str(warmup)),
        *("--seed", str(args.seed), "--threads", str(c.threads), "--batches", str(args.batches)),
        *(("--tasks", str(args.tasks)) if args.tasks else ()),
        *(("--dump", str(dump)) if dump else ()),
    ]
    if c.library == PEER:
        cmd = [str(peer_py), str(PEER_SCRIPT), *common]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(c.route), *common]
        if c.channels_last:
            cmd.append("--channels-last")
        if c.bf16:
            cmd.append("--bf16")
        if c.compile:
            cmd.append("--compile")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{c.name} failed on {workload} (exit {proc.returncode}): {shlex.join(cmd)}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        raise SystemExit(f"{c.name} printed no result: {shlex.join(cmd)}\n{proc.stderr[-4000:]}")
    rep = json.loads(lines[-1])
    if rep["threads"] != c.threads:
        raise SystemExit(f"{c.name} ran with {rep['threads']} threads, not {c.threads}")
    return rep


def compare_dumps(ref: Path, other: Path, multistep: bool = False, bf16: bool = False) -> dict:
    """Largest absolute differences of initial weights and first meta-gradients, parameter by parameter."""
    import torch

    a, b = torch.load(ref, weights_only=True), torch.load(other, weights_only=True)
    shapes_a = [tuple(t.shape) for t in a["grads"]]
    shapes_b = [tuple(t.shape) for t in b["grads"]]
    if shapes_a != shapes_b:
        return {"error": f"parameter shapes differ: {shapes_a} vs {shapes_b}"}
    wdiff = max(float((x - y).abs().max()) for x, y in zip(a["weights"], b["weights"], strict=True))
    gdiff = [float((x - y).abs().max()) for x, y in zip(a["grads"], b["grads"], strict=True)]
    worst = max(range(len(gdiff)), key=gdiff.__getitem__)
    scale = max(float(x.abs().max()) for x in a["grads"])
    rel = gdiff[worst] / scale if scale else float("inf")
    if bf16:
        close, criterion = rel < GRAD_REL_TOLERANCE_BF16, f"bfloat16: relative < {GRAD_REL_TOLERANCE_BF16}"
    elif multistep:
        close, criterion = rel < GRAD_REL_TOLERANCE_MULTISTEP, f"relative < {GRAD_REL_TOLERANCE_MULTISTEP}"
    else:
        close, criterion = gdiff[worst] < GRAD_TOLERANCE, f"absolute < {GRAD_TOLERANCE}"
    return {
        "initial_weights_max_abs_diff": wdiff,
        "grad_max_abs_diff": gdiff[worst],
        "grad_max_abs_diff_parameter": b["names"][worst],
        "grad_max_abs_reference": scale,
        "grad_max_rel_diff": rel,
        "first_loss": b["loss"],
        "first_loss_reference": a["loss"],
        "agree": wdiff == 0.0 and close,
        "criterion": criterion,
    }


def reference_for(workload: str, contenders: list[Contender]) -> Contender:
    """The contender the others' gradients are compared with: learn2learn (at its first thread count)."""
    if workload in PEERLESS:
        return next(c for c in contenders if c.route == "loop")
    return next(c for c in contenders if c.library == PEER)


def fmt_ms(ms: float) -> str:
    return f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def markdown_tables(results: dict) -> str:
    lines = [
        "| workload | learn2learn ms | best fewshot variant | fewshot ms | fewshot / learn2learn | goal |",
        "|---|---|---|---|---|---|",
    ]
    for wname, res in results.items():
        h = res["headline"]
        if wname in PEERLESS:
            goal = f"peak RSS <= {MEMORY_GOAL_MB[wname]} MiB (best variant: {h['best_peak_rss_mb']:.0f} MiB)"
            lines.append(f"| {wname} | - | {h['best']} | {fmt_ms(h['best_ms'])} | - | {goal} |")
        else:
            goal = f"<= {TIME_GOALS[wname]}x" if wname in TIME_GOALS else ""
            lines.append(
                f"| {wname} | {fmt_ms(h['peer_ms'])} ({h['peer']}) | {h['best']} | {fmt_ms(h['best_ms'])} | "
                f"{h['ratio']:.3f}x | {goal} |"
            )
            if "bf16" in h:
                b = h["bf16"]
                lines.append(
                    f"| {wname} (bfloat16) | {fmt_ms(h['peer_ms'])} ({h['peer']}) | {b['best']} | "
                    f"{fmt_ms(b['best_ms'])} | {b['ratio']:.3f}x | {goal} |"
                )
    lines += [
        "",
        "| workload | contender | threads | median ms | q1-q3 ms | peak RSS MiB | vs learn2learn | "
        "max abs grad diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for wname, res in results.items():
        for name, c in res["contenders"].items():
            ratio = res["ratios"].get(name)
            check = res["gradient_check"].get(name)
            if check is None:
                diff = "reference"
            elif "error" in check:
                diff = check["error"]
            else:
                diff = f"{check['grad_max_abs_diff']:.1e}" + ("" if check["agree"] else " (!)")
            lines.append(
                f"| {wname} | {name} | {c['threads']} | {fmt_ms(c['median_ms'])} | "
                f"{fmt_ms(c['q1_ms'])}-{fmt_ms(c['q3_ms'])} | {c['peak_rss_mb']:.0f} | "
                f"{'-' if ratio is None else f'{ratio:.3f}x'} | {diff} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="MAML meta-iteration speed and peak memory, fewshot against learn2learn "
        "(interleaved rounds, medians).",
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument(
        "--steps",
        type=int,
        default=10,
        help="timed meta-iterations per contender per round, conv4 (default 10)",
    )
    p.add_argument("--sine-steps", type=int, default=100, help="the same for sinusoids (default 100)")
    p.add_argument("--long-steps", type=int, default=3, help="the same for 10 inner steps (default 3)")
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed meta-iterations first (default 2; at least 3 for sinusoids, at most 1 for 10 steps)",
    )
    p.add_argument(
        "--allocator",
        choices=("tuned", "default"),
        default="tuned",
        help=f"glibc malloc setting of every contender: tuned (GLIBC_TUNABLES={TUNED_ALLOCATOR}, default) "
        "or glibc's default",
    )
    p.add_argument(
        "--threads", type=int, default=2, help="torch threads (default 2; sinusoids also run at 1)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batches", type=int, default=2, help="distinct random meta-batches, cycled (default 2)")
    p.add_argument(
        "--workloads", nargs="+", choices=tuple(WORKLOADS), default=list(WORKLOADS), help="default: all"
    )
    p.add_argument(
        "--tasks",
        type=int,
        default=None,
        help="override tasks per meta-iteration (smoke checks only: the workloads above are defined with "
        "32 and 25; recorded in the results)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 round, 1 warm-up + 2 timed steps (3 for sinusoids, 1 for 10 inner steps): a smoke check, "
        "not a measurement",
    )
    p.add_argument("--out", type=Path, default=None, help="results file (default benchmarks/results/...)")
    # internal: run one fewshot contender and print its JSON
    p.add_argument("--worker", choices=ROUTES, help=argparse.SUPPRESS)
    p.add_argument("--workload", choices=tuple(WORKLOADS), help=argparse.SUPPRESS)
    p.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dump", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.sine_steps, args.long_steps, args.warmup = 1, 2, 3, 1, 1
    counts = (args.rounds, args.steps, args.sine_steps, args.long_steps, args.threads, args.batches)
    if min(counts) < 1 or args.warmup < 0 or (args.tasks is not None and args.tasks < 1):
        p.error(
            "--rounds, --*steps, --threads, --batches and --tasks must be at least 1, --warmup at least 0"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        fewshot_worker(args)
        return

    from setup_env import ensure_peer_env

    peer_py = ensure_peer_env()
    env = child_env(args.allocator)
    out = args.out or RESULTS / ("maml_speed_quick.json" if args.quick else "maml_speed.json")
    command = shlex.join([os.path.relpath(sys.executable, ROOT), *sys.argv])
    print(
        f"MAML meta-iteration timing: {args.rounds} round(s), workloads {', '.join(args.workloads)}, "
        f"allocator {args.allocator}, {args.threads} threads",
        file=sys.stderr,
        flush=True,
    )
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load_start is not None and load_start[0] > 0.5:
        print(
            f"warning: load average {load_start[0]:.2f} over the last minute; if other work is running, "
            "timings will be noisy, and with 2 threads on a busy machine erratic (OpenMP threads wait for "
            "descheduled ones): run this benchmark alone",
            file=sys.stderr,
            flush=True,
        )

    contenders = {w: contenders_for(w, args) for w in args.workloads}
    times: dict[str, dict[str, list[list[float]]]] = {
        w: {c.name: [] for c in cs} for w, cs in contenders.items()
    }
    reports: dict[str, dict[str, list[dict]]] = {w: {c.name: [] for c in cs} for w, cs in contenders.items()}
    checksums: dict[str, float] = {}
    checks: dict[str, dict[str, dict]] = {w: {} for w in args.workloads}
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="maml_speed-") as tmp:
        for r in range(args.rounds):
            for wname, cs in contenders.items():
                k = r % len(cs)
                for c in cs[k:] + cs[:k]:
                    dump = Path(tmp) / f"{wname}__{c.name}.pt" if r == 0 else None
                    rep = run_contender(c, wname, args, peer_py, env, dump)
                    checksums.setdefault(wname, rep["input_checksum"])
                    if rep["input_checksum"] != checksums[wname]:
                        raise SystemExit(
                            f"{c.name} saw different inputs on {wname}: seeded generators disagree"
                        )
                    times[wname][c.name].append(rep["times_s"])
                    reports[wname][c.name].append(rep)
                    print(
                        f"  round {r + 1}/{args.rounds}  {wname:18s} {c.name:22s} "
                        f"median {statistics.median(rep['times_s']) * 1e3:9.2f} ms  "
                        f"peak RSS {rep['peak_rss_mb']:6.0f} MiB",
                        file=sys.stderr,
                        flush=True,
                    )
                if r == 0:
                    ref = reference_for(wname, cs)
                    for c in cs:
                        if c.name != ref.name:
                            checks[wname][c.name] = compare_dumps(
                                Path(tmp) / f"{wname}__{ref.name}.pt",
                                Path(tmp) / f"{wname}__{c.name}.pt",
                                multistep=WORKLOADS[wname]["inner_steps"] > 1,
                                bf16=c.bf16,
                            )
                    checks[wname]["reference"] = {"contender": ref.name}
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None

    results = {}
    for wname, cs in contenders.items():
        table = {}
        for c in cs:
            reps = reports[wname][c.name]
            table[c.name] = {
                **asdict(c),
                **summarise(times[wname][c.name]),
                "peak_rss_mb": max(rep["peak_rss_mb"] for rep in reps),
                "peak_rss_mb_per_round": [rep["peak_rss_mb"] for rep in reps],
                "rss_before_steps_mb": max(rep["rss_before_steps_mb"] for rep in reps),
                "loss_first_last_per_round": [[rep["loss_first"], rep["loss_last"]] for rep in reps],
                "first_warmup_step_s": [(rep.get("warmup_times_s") or [None])[0] for rep in reps],
            }
        ours = [c for c in cs if c.library == "fewshot"]
        best = min((c for c in ours if not c.bf16), key=lambda c: table[c.name]["median_ms"])
        best_bf16 = min((c for c in ours if c.bf16), key=lambda c: table[c.name]["median_ms"], default=None)
        ratios, headline = {}, {"best": best.name, "best_ms": table[best.name]["median_ms"]}
        headline["best_peak_rss_mb"] = table[best.name]["peak_rss_mb"]
        if wname not in PEERLESS:
            peers = {c.threads: c for c in cs if c.library == PEER}
            for c in ours:
                ratios[c.name] = table[c.name]["median_ms"] / table[peers[c.threads].name]["median_ms"]
            peer = min(peers.values(), key=lambda c: table[c.name]["median_ms"])
            headline |= {
                "peer": peer.name,
                "peer_ms": table[peer.name]["median_ms"],
                "ratio": table[best.name]["median_ms"] / table[peer.name]["median_ms"],
                "ratio_definition": "best float32 fewshot variant median / best learn2learn median (lower "
                "is better)",
                "goal_ratio": TIME_GOALS.get(wname),
            }
            if best_bf16 is not None:
                headline["bf16"] = {
                    "best": best_bf16.name,
                    "best_ms": table[best_bf16.name]["median_ms"],
                    "ratio": table[best_bf16.name]["median_ms"] / table[peer.name]["median_ms"],
                    "best_peak_rss_mb": table[best_bf16.name]["peak_rss_mb"],
                }
        else:
            headline["goal_peak_rss_mb"] = MEMORY_GOAL_MB.get(wname)
            headline["peak_rss_mb_all_variants"] = {c.name: table[c.name]["peak_rss_mb"] for c in ours}
        warmup, steps = steps_for(wname, args)
        results[wname] = {
            **WORKLOADS[wname],
            "tasks": reports[wname][cs[0].name][0]["tasks"],
            "warmup_steps": warmup,
            "steps_per_round": steps,
            "contenders": table,
            "ratios": ratios,
            "headline": headline,
            "gradient_check": checks[wname],
        }

    first = {w: reports[w] for w in args.workloads}
    ours_rep = next(reps[0] for w in first.values() for n, reps in w.items() if n.startswith("fewshot"))
    peer_rep = next((reps[0] for w in first.values() for n, reps in w.items() if n.startswith(PEER)), None)
    data = {
        "benchmark": "MAML meta-iteration (inner adaptation per task, meta-gradient, Adam step) and peak RSS",
        "started_utc": started.isoformat(timespec="seconds"),
        "command": command,
        "cwd": str(ROOT),
        "quick": args.quick,
        "rounds": args.rounds,
        "seed": args.seed,
        "distinct_meta_batches": args.batches,
        "tasks_override": args.tasks,
        "threads": args.threads,
        "threads_note": "conv4 workloads: every contender at --threads; sine_maml: every contender at 1 and "
        "at --threads",
        "allocator": {
            "setting": args.allocator,
            "GLIBC_TUNABLES": env.get("GLIBC_TUNABLES"),
            "seen_by_contenders": sorted(
                {str(rep["glibc_tunables"]) for w in reports.values() for rs in w.values() for rep in rs}
            ),
        },
        "machine": {**machine_info(), "torch_cpu_capability": ours_rep.get("cpu_capability")},
        "load_average": {"start": load_start, "end": load_end},
        "versions": {
            "python": ours_rep["python"],
            "torch": ours_rep["torch"],
            "fewshot": ours_rep["fewshot"],
            "fewshot_git": git_state(),
            **(
                {
                    "python_peer_env": peer_rep["python"],
                    "torch_peer_env": peer_rep["torch"],
                    "learn2learn": peer_rep["learn2learn"],
                }
                if peer_rep
                else {}
            ),
        },
        "interpreters": {"fewshot": ours_rep["executable"], PEER: peer_rep and peer_rep["executable"]},
        "contenders": {
            PEER: "l2l.algorithms.MAML(model, lr, first_order); per task clone(), adapt(support loss), "
            "query_loss.backward(); grads / tasks; Adam. conv4 as nn.Sequential (BatchNorm without running "
            "statistics), default memory format",
            "fewshot_loop / fewshot_vmap": "meta_gradient(MAML(...), model, parameters_of(model), tasks, "
            "route='loop'|'vmap'); p.grad = grads[name]; Adam",
            "fewshot_autograd": "(sum over tasks of task_loss(MAML(...), model, parameters_of(model), task)[0] / "
            "tasks).backward(); Adam",
            "_cl suffix": "model and inputs in torch.channels_last",
            "_bf16 suffix": "torch.autocast('cpu', dtype=torch.bfloat16) around the meta-iteration",
            "_compiled suffix": "meta_gradient(..., compile=True): the vmapped meta-gradient under torch.compile; "
            "compilation happens in the first warm-up step (warmup_times_s) and is not timed",
            "_t1 / _t2 suffix": "torch threads (sinusoids)",
        },
        "gradient_check_definition": "initial weights and meta-gradient of the first meta-iteration (first "
        "meta-batch, before the Adam step) of round 1, against the reference contender; agree = identical "
        f"initial weights and max abs gradient difference < {GRAD_TOLERANCE} (1 inner step), or that "
        f"difference relative to the largest gradient entry < {GRAD_REL_TOLERANCE_MULTISTEP} (10 inner steps, "
        "where float32 rounding grows)",
        "peak_rss_definition": "ru_maxrss of the worker process (MiB), largest over rounds; includes Python "
        "and torch (rss_before_steps_mb is the peak before the first meta-iteration)",
        "workloads": results,
    }
    write_atomic(out, data)

    print(markdown_tables(results))
    print(
        f"\nMedian ms per meta-iteration over {args.rounds} interleaved round(s); fewshot / learn2learn time "
        f"(lower is better). Allocator: {args.allocator}"
        f"{' (GLIBC_TUNABLES=' + TUNED_ALLOCATOR + ')' if args.allocator == 'tuned' else ''}; "
        f"{args.threads} torch threads{'' if args.threads == 1 else f' (sinusoids: 1 and {args.threads})'}; torch {ours_rep['torch']}"
        f"{', learn2learn ' + peer_rep['learn2learn'] if peer_rep else ''}."
    )
    if args.tasks:
        print(f"--tasks {args.tasks}: not the benchmark's workloads (32 and 25 tasks per meta-iteration).")
    if args.quick:
        print("--quick: a smoke check only; the numbers are not a measurement.")
    print(f"Results: {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
