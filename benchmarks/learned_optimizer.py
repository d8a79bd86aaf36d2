"""The learned LSTM optimizer (Andrychowicz et al. 2016) against SGD, Adam and RMSprop with tuned steps.

    .venv/bin/python benchmarks/learned_optimizer.py                 # 10 minutes of meta-training per problem
    .venv/bin/python benchmarks/learned_optimizer.py --smoke --out /tmp/lo.json   # tiny settings, a smoke run

Two problems, as in the paper's sections 3.1 and 3.2:

* random 10-dimensional quadratics ``||W theta - y||^2`` (W, y standard normal), held-out functions drawn
  from another random stream;
* an MLP with 20 sigmoid hidden units classifying flattened 28x28 Omniglot images of 10 classes with all 20
  drawings each (200 images in one full batch; the paper used minibatches of 128 on MNIST). Meta-training and
  step-size tuning draw classes from the Vinyals "train" classes, evaluation from the held-out "test" classes.

The LSTM (2 layers of 20, preprocessing p = 10, output scale 0.1) is meta-trained for ``--minutes`` on each
problem (Adam at ``--meta-lr``, truncations of 20 steps over optimizee runs of 100). SGD, Adam and RMSprop
each take the step size in GRID with the lowest mean loss over 100 steps (the meta-training objective),
averaged over ``--tune`` training problems. Every optimizer then runs on the same ``--runs`` held-out problems
for ``--horizon`` steps (200: twice the trained horizon, the paper's generalisation test); curves are the mean
loss per step with a 95% CI (1.96 sd / sqrt(runs)). Runs that diverge (non-finite loss) are counted, left out.

Writes benchmarks/results/learned_optimizer.json and .png, and the trained nets to
benchmarks/work/learned_optimizer/ (beside ``--out`` when it is given). Run it alone.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, WORK, header, save_figure

from fewshot import io
from fewshot.datasets import omniglot
from fewshot.learned_optimizer import (
    LearnedOptimizer,
    OmniglotMLP,
    Problem,
    Quadratics,
    meta_train,
    optimize,
)

GRID = [m * 10.0**k for k in range(-4, 1) for m in (1, 2, 5)] + [10.0]  # 1e-4 ... 10, three per decade
BASELINES = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam, "RMSprop": torch.optim.RMSprop}
TRAINED_STEPS, UNROLL = 100, 20  # the paper's optimizee horizon and truncation length
TITLES = {"quadratic": "10-dim quadratics (held out)", "omniglot_mlp": "MLP, held-out Omniglot classes"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="meta-training time per problem")
    parser.add_argument("--runs", type=int, default=100, help="held-out problems per optimizer")
    parser.add_argument("--horizon", type=int, default=200, help="optimizee steps at test")
    parser.add_argument("--tune", type=int, default=20, help="training problems for the step-size search")
    parser.add_argument("--meta-lr", type=float, default=3e-3, help="Adam's step on the LSTM's weights")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny settings, for checking the script")
    parser.add_argument(
        "--out", type=Path, help="results file (default benchmarks/results/learned_optimizer.json)"
    )
    args = parser.parse_args()
    settings = dict(grid=GRID, trained_steps=TRAINED_STEPS, unroll=UNROLL)
    if args.smoke:
        args.minutes, args.runs, args.horizon, args.tune = 0.02, 4, 20, 2
        settings = dict(grid=[1e-2, 1e-1, 1.0], trained_steps=10, unroll=5)
    torch.set_num_threads(args.threads)
    out = args.out or RESULTS / "learned_optimizer.json"
    work = WORK / "learned_optimizer" if args.out is None else out.parent
    results = header(
        "learned_optimizer",
        args.seed,
        threads=args.threads,
        minutes=args.minutes,
        runs=args.runs,
        horizon=args.horizon,
        meta_lr=args.meta_lr,
        tune_problems=args.tune,
        tuning_criterion=f"mean loss over {settings['trained_steps']} steps, averaged over tuning problems",
        **settings,
        setup={
            "quadratic": "10-dim, W and y standard normal, theta_0 ~ N(0, 0.01^2); meta-training on "
            "problems of 128 functions (loss summed, so meta-losses below are sums over 128)",
            "omniglot_mlp": "784-20 sigmoid-10 MLP, 10 classes x 20 drawings (200 images, full batch), "
            "Vinyals 'train' classes for meta-training and tuning, 'test' classes for evaluation",
        },
        problems={},
    )
    # quadratics: 128 functions per meta-training problem (as the paper's code); their loss is a sum, so every
    # coordinate still sees the gradient of its own function
    problems = {"quadratic": lambda: (Quadratics(batch=128), Quadratics(), Quadratics())}
    problems["omniglot_mlp"] = lambda: (
        (OmniglotMLP(omniglot("train")),) * 2 + (OmniglotMLP(omniglot("test")),)
    )
    for name, make in problems.items():
        results["problems"][name] = run_problem(name, *make(), args, work, **settings)
        io.write_json(out, results)
    plot(results, out.with_suffix(".png"))


def run_problem(name, meta_problems, train, test, args, work: Path, grid, trained_steps, unroll) -> dict:
    """Meta-trains the LSTM, tunes the baselines on training problems, runs everything on held-out ones."""
    print(f"{name}: meta-training for {args.minutes:g} minutes", flush=True)
    start = time.perf_counter()
    net, history = meta_train(
        meta_problems, steps=10**9, unroll_steps=unroll, optimizee_steps=trained_steps, meta_lr=args.meta_lr,
        seed=args.seed, max_seconds=60 * args.minutes,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    net.save(work / f"learned_optimizer_{name}.safetensors")
    runs_done = len(history) * unroll // trained_steps
    print(f"{name}: {len(history)} truncations ({runs_done} optimizee runs) in {seconds:.0f} s", flush=True)

    tuning_gen = torch.Generator().manual_seed(args.seed + 1_000_003)
    tuning = [train(tuning_gen) for _ in range(args.tune)]
    scores = {
        opt: {lr: tune_score(tuning, cls, lr, trained_steps) for lr in grid} for opt, cls in BASELINES.items()
    }
    chosen = {opt: min(s, key=s.get) for opt, s in scores.items()}
    print(f"{name}: tuned step sizes {chosen}", flush=True)

    test_gen = torch.Generator().manual_seed(args.seed + 2_000_003)
    held_out = [test(test_gen) for _ in range(args.runs)]  # the same problems for every optimizer
    makers = {"learned (LSTM)": lambda ps: LearnedOptimizer(ps, net)}
    for opt, cls in BASELINES.items():
        makers[f"{opt} (lr {chosen[opt]:g})"] = lambda ps, cls=cls, lr=chosen[opt]: cls(ps, lr=lr)
    curves = {}
    for method, make in makers.items():
        losses = np.stack([optimize(p, make, args.horizon).double().numpy() for p in held_out])
        s = curves[method] = summarise(losses, trained_steps)
        (m, c), (m_end, c_end) = s["at_trained"], s["at_horizon"]
        print(f"{name} {method}: loss at step {trained_steps} {m:.4g} ± {c:.2g}, at {args.horizon} "
              f"{m_end:.4g} ± {c_end:.2g} ({s['diverged']} diverged)", flush=True)  # fmt: skip
    return {
        "meta_training": {
            "truncations": len(history),
            "optimizee_runs": runs_done,
            "seconds": seconds,
            "meta_loss_every_10": history[::10],
        },  # fmt: skip
        "tuning_scores": {opt: {repr(lr): v for lr, v in s.items()} for opt, s in scores.items()},
        "tuned_lr": chosen,
        "curves": curves,
    }


def tune_score(problems: list[Problem], cls: type[torch.optim.Optimizer], lr: float, steps: int) -> float:
    """Mean loss over the first ``steps`` steps, averaged over problems; ``inf`` if any run diverges."""
    total = 0.0
    for problem in problems:
        losses = optimize(problem, lambda ps: cls(ps, lr=lr), steps)[:steps]
        if not torch.isfinite(losses).all():
            return math.inf
        total += losses.double().mean().item()
    return total / len(problems)


def summarise(losses: np.ndarray, trained_steps: int) -> dict:
    """Per-step mean and 95% CI over the runs of ``losses`` (runs, steps + 1) that stayed finite."""
    finite = np.isfinite(losses).all(axis=1)
    ok = losses[finite]
    nan = np.full(losses.shape[1], math.nan)
    mean = ok.mean(axis=0) if len(ok) else nan
    ci = 1.96 * ok.std(axis=0, ddof=1) / math.sqrt(len(ok)) if len(ok) > 1 else nan
    return {
        "mean": mean.tolist(),
        "ci95": ci.tolist(),
        "at_trained": [float(mean[trained_steps]), float(ci[trained_steps])],
        "at_horizon": [float(mean[-1]), float(ci[-1])],
        "diverged": int((~finite).sum()),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results["problems"]), figsize=(11, 4.2), squeeze=False)
    for ax, (name, problem) in zip(axes[0], results["problems"].items(), strict=True):
        for method, c in problem["curves"].items():
            mean, ci = np.array(c["mean"]), np.array(c["ci95"])
            steps = np.arange(len(mean))
            ax.plot(
                steps,
                mean,
                label=method + (f" ({c['diverged']} diverged, left out)" if c["diverged"] else ""),
            )
            ax.fill_between(steps, np.maximum(mean - ci, mean * 1e-2), mean + ci, alpha=0.2)  # log axis: > 0
        ax.axvline(results["trained_steps"], color="grey", ls=":", lw=1)  # to its right: longer than trained
        ax.set_yscale("log")
        ax.set_xlabel("optimizee step")
        ax.set_ylabel("loss (mean, 95% CI)")
        ax.set_title(f"{TITLES.get(name, name)}, {results['runs']} runs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Learned LSTM optimizer against tuned baselines ({results['minutes']:g} min meta-training each)"
    )
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
