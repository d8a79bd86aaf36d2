"""ResNet-12 against conv4 on miniImageNet-sized images: training-episode time, second-order MAML memory.

    .venv/bin/python benchmarks/resnet12_speed.py           # each configuration in its own process (run alone)
    .venv/bin/python benchmarks/resnet12_speed.py --quick   # 32x32 images, 1 warm-up + 1 timed step: a smoke run

One *training episode* is what ``fewshot train`` does per step with one task per step: the forward passes, the
loss, the backward pass (through the inner loop for MAML) and an Adam step. Workloads, on random standard-normal
3 x 84 x 84 images from a generator seeded with ``--seed`` (two distinct episodes, cycled):

1. ``protonet_5w5s15q``: ProtoNet (Snell et al. 2017), 5-way 5-shot, 15 queries per class (100 images);
2. ``maml_5w1s15q_1step``: second-order MAML (Finn et al. 2017), 5-way 1-shot, 15 queries per class, 1 inner
   step of lr 0.01 (Finn et al.'s miniImageNet step size), batch-statistics BatchNorm;
3. ``maml_5w1s15q_5step``: the same with 5 inner steps (Finn et al.'s miniImageNet training setting).

Networks: what ``fewshot train --backbone B`` builds for the algorithm (``standard_network``): ResNet-12
(64-160-320-640, 12.4 M weights, global average pooling; Lee et al. 2019) and conv4 (4 x 64 channels, 1,600
features at 84 pixels; Snell et al. 2017; Finn et al. used 32 channels for MAML on miniImageNet). Both in
channels_last (weights and inputs), in float32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)``. MAML's
meta-gradient is ``meta_gradient(..., route="loop")``, the route ``fewshot train`` takes for one task.

Time: the median over ``--steps`` timed episodes (``--conv4-steps`` for conv4) after ``--warmup`` untimed ones,
with ``--threads`` torch threads. Memory: each configuration runs in a fresh subprocess, which reports its peak
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and its RSS just before the first episode
(after the interpreter, torch, the network, the optimizer and the data were loaded). Their difference,
``added_mb``, is the memory the episodes needed at their peak: one task's autograd graph (the activations kept
for the backward pass, for MAML also those of the differentiated inner-loop backward), the gradients and Adam's
two moments (together 3x the weights, ``weights_mb``, allocated at the first step). RSS counts the pages
touched, so it is what the machine had to provide, allocator overhead included; every subprocess runs with the
same allocator setting.

Results: ``benchmarks/results/resnet12_speed.json`` (written atomically) and ``resnet12_speed.md``; ``--quick``
writes ``resnet12_speed_quick.json`` only. The Markdown table also goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from protonet_speed import (  # noqa: E402
    TUNED_ALLOCATOR,
    child_env,
    git_state,
    machine_info,
    summarise,
    write_atomic,
)

WORKLOADS: dict[str, dict] = {
    "protonet_5w5s15q": {"algorithm": "protonet", "ways": 5, "shots": 5, "queries": 15, "inner_steps": 0},
    "maml_5w1s15q_1step": {"algorithm": "maml", "ways": 5, "shots": 1, "queries": 15, "inner_steps": 1},
    "maml_5w1s15q_5step": {"algorithm": "maml", "ways": 5, "shots": 1, "queries": 15, "inner_steps": 5},
}
BACKBONES = ("resnet12", "conv4")
PRECISIONS = ("fp32", "bf16")
INNER_LR = 0.01  # Finn et al. 2017, miniImageNet
OUTER_LR = 1e-3


# ----------------------------------------------------------------------------------------------------
# one configuration (runs in a subprocess: this file with --worker)


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident set size now, in MiB (from /proc; the peak where that cannot be read)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return rss_mb()


def worker(args: argparse.Namespace) -> None:
    import torch

    import fewshot
    from fewshot.algorithms.base import parameters_of, task_loss
    from fewshot.algorithms.maml import MAML
    from fewshot.algorithms.protonet import ProtoNet
    from fewshot.algorithms.routes import meta_gradient
    from fewshot.models import ModelRequest, standard_network
    from fewshot.tasks.episodes import Split, Task, stack_tasks

    w = WORKLOADS[args.workload]
    maml = w["algorithm"] == "maml"
    torch.set_num_threads(args.threads)
    cl = torch.channels_last
    gen = torch.Generator().manual_seed(args.seed)
    side, ways = args.image_size, w["ways"]
    ys = torch.arange(ways).repeat_interleave(w["shots"])
    yq = torch.arange(ways).repeat_interleave(w["queries"])
    tasks, checksum = [], 0.0
    for _ in range(2):
        xs = torch.randn(ways * w["shots"], 3, side, side, generator=gen)
        xq = torch.randn(ways * w["queries"], 3, side, side, generator=gen)
        checksum += float(xs.double().sum() + xq.double().sum())
        tasks.append(
            Task(Split(xs.contiguous(memory_format=cl), ys), Split(xq.contiguous(memory_format=cl), yq), ways)
        )

    torch.manual_seed(args.seed)
    request = ModelRequest("images", 3, side, 64, ways, backbone=args.backbone)
    model = standard_network(request, ways if maml else None, batch_statistics=maml).to(memory_format=cl)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=OUTER_LR)
    algorithm = MAML(inner_lr=INNER_LR, inner_steps=w["inner_steps"]) if maml else ProtoNet()
    batches = [stack_tasks([t]) for t in tasks]
    if not all(b.query.x[0].is_contiguous(memory_format=cl) for b in batches):  # as the trainer's tasks are
        raise SystemExit(
            "stack_tasks lost the channels_last layout: the timings would not be of channels_last"
        )

    def step(i: int) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            if maml:
                grads, loss = meta_gradient(
                    algorithm, model, parameters_of(model), batches[i % 2], route="loop"
                )
                for name, p in model.named_parameters():
                    p.grad = grads[name]
            else:
                loss, _ = task_loss(algorithm, model, parameters_of(model), tasks[i % 2])
                opt.zero_grad(set_to_none=True)
                loss.backward()
        opt.step()
        return loss.detach()

    rss_before = current_rss_mb()
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = step(i)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(loss))  # after the clock stops
    weights = sum(p.numel() for p in model.parameters())
    print(json.dumps({
        "times_s": times, "loss_first": losses[0], "loss_last": losses[-1], "input_checksum": checksum,
        "peak_rss_mb": rss_mb(), "rss_before_steps_mb": rss_before, "added_mb": rss_mb() - rss_before,
        "weights": weights, "weights_mb": 4 * weights / 2**20, "threads": torch.get_num_threads(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "fewshot": fewshot.__version__,
    }))  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# the driver


def run_config(workload: str, backbone: str, precision: str, args: argparse.Namespace, env: dict) -> dict:
    steps = args.steps if backbone == "resnet12" else args.conv4_steps
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--workload", workload, "--backbone", backbone,
           "--precision", precision, "--steps", str(steps), "--warmup", str(args.warmup), "--seed", str(args.seed),
           "--threads", str(args.threads), "--image-size", str(args.image_size)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(
            f"{workload} {backbone} {precision} failed (exit {proc.returncode}): {shlex.join(cmd)}"
        )
    return json.loads(lines[-1])


def fmt_ms(ms: float) -> str:
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}"


def markdown_table(data: dict) -> str:
    head = (
        f"{data['image']} images, {data['threads']} threads, channels_last, allocator {data['allocator']['setting']}; "
        f"median ms per training episode (forward, backward, Adam step; one task), and the memory the episodes "
        f"added to the process (peak RSS minus RSS before the first episode, MiB; includes gradients and Adam "
        f"moments, 3 x the weights).\n\n"
        "| workload | backbone | fp32 ms | bf16 ms | bf16 speed-up | fp32 added MiB | bf16 added MiB | weights MiB |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for wname, per_backbone in data["workloads"].items():
        for backbone, res in per_backbone.items():
            f32, b16 = res["fp32"], res["bf16"]
            lines.append(
                f"| {wname} | {backbone} | {fmt_ms(f32['median_ms'])} | {fmt_ms(b16['median_ms'])} | "
                f"{f32['median_ms'] / b16['median_ms']:.2f}x | {f32['added_mb']:,.0f} | {b16['added_mb']:,.0f} | "
                f"{f32['weights_mb']:.1f} |"
            )
    lines += ["", "| workload | precision | resnet12 / conv4 time |", "|---|---|---|"]
    for wname, per_backbone in data["workloads"].items():
        for precision in PRECISIONS:
            ratio = (
                per_backbone["resnet12"][precision]["median_ms"]
                / per_backbone["conv4"][precision]["median_ms"]
            )
            lines.append(f"| {wname} | {precision} | {ratio:.1f}x |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ResNet-12 against conv4: training-episode time and MAML memory.")
    p.add_argument(
        "--steps", type=int, default=5, help="timed episodes per ResNet-12 configuration (default 5)"
    )
    p.add_argument(
        "--conv4-steps", type=int, default=20, help="timed episodes per conv4 configuration (default 20)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed episodes first (default 1)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--image-size", type=int, default=84, help="image side (default 84, miniImageNet)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allocator", choices=("tuned", "default"), default="tuned",
                   help=f"glibc malloc setting of every configuration: tuned (GLIBC_TUNABLES={TUNED_ALLOCATOR}, "
                   "default) or glibc's default")  # fmt: skip
    p.add_argument(
        "--quick", action="store_true", help="32x32 images, 1 warm-up + 1 timed step: a smoke check"
    )
    p.add_argument("--out", type=Path, default=None, help="results file (default benchmarks/results/...)")
    # internal: run one configuration and print its JSON
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workload", choices=tuple(WORKLOADS), help=argparse.SUPPRESS)
    p.add_argument("--backbone", choices=BACKBONES, help=argparse.SUPPRESS)
    p.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick and not args.worker:
        args.image_size, args.steps, args.conv4_steps, args.warmup = 32, 1, 1, 1
    if min(args.steps, args.conv4_steps, args.threads) < 1 or args.warmup < 0 or args.image_size < 16:
        p.error(
            "--steps, --conv4-steps and --threads must be at least 1, --warmup at least 0, --image-size 16"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    from common import header

    env = child_env(args.allocator)
    name = "resnet12_speed_quick" if args.quick else "resnet12_speed"
    out = args.out or RESULTS / f"{name}.json"
    load_start = os.getloadavg()
    if load_start[0] > 0.5:
        print(f"warning: load average {load_start[0]:.2f}; with other work running the timings are noisy, and "
              "with 2 threads erratic: run this benchmark alone", file=sys.stderr, flush=True)  # fmt: skip
    started = datetime.now(timezone.utc)
    results: dict[str, dict] = {}
    checksums: dict[str, float] = {}
    for wname in WORKLOADS:
        for backbone in BACKBONES:
            for precision in PRECISIONS:
                rep = run_config(wname, backbone, precision, args, env)
                if checksums.setdefault(wname, rep["input_checksum"]) != rep["input_checksum"]:
                    raise SystemExit(f"{wname}: configurations saw different inputs")
                rep |= summarise([rep["times_s"]])
                results.setdefault(wname, {}).setdefault(backbone, {})[precision] = rep
                print(f"  {wname:20s} {backbone:9s} {precision}  median {fmt_ms(rep['median_ms']):>7s} ms  "
                      f"added {rep['added_mb']:7,.0f} MiB  loss {rep['loss_first']:.3f} -> {rep['loss_last']:.3f}",
                      file=sys.stderr, flush=True)  # fmt: skip
    first = results["protonet_5w5s15q"]["resnet12"]["fp32"]
    data = header(
        "resnet12_speed", args.seed, started_utc=started.isoformat(timespec="seconds"), quick=args.quick,
        image=[3, args.image_size, args.image_size], threads=args.threads, warmup_steps=args.warmup,
        timed_steps={"resnet12": args.steps, "conv4": args.conv4_steps},
        allocator={"setting": args.allocator, "GLIBC_TUNABLES": env.get("GLIBC_TUNABLES")},
        machine={**machine_info(), "torch_cpu_capability": first["cpu_capability"]},
        load_average={"start": load_start, "end": os.getloadavg()}, fewshot_git=git_state(),
        definitions={
            "median_ms": "median wall time of one training episode: forward, loss, backward (MAML: through the "
            "inner loop, second order), Adam step; one task",
            "added_mb": "peak RSS of the configuration's own process minus its RSS before the first episode "
            "(MiB): one task's autograd graph, gradients, Adam moments, allocator overhead",
            "maml": f"second order, inner lr {INNER_LR}, route loop, batch-statistics BatchNorm",
        },
        workloads=results,
    )  # fmt: skip
    write_atomic(out, data)
    table = markdown_table(data)
    if not args.quick:  # (quick results are git-ignored JSON only)
        title = (
            f"`{data['command']}`; {data['machine']['cpu_model']}, torch {first['torch']}, seed {args.seed}"
        )
        out.with_suffix(".md").write_text(
            f"# ResNet-12 and conv4 training episodes\n\n{title}, {started.date()}.\n\n{table}\n"
        )
    print(table)


if __name__ == "__main__":
    main()
