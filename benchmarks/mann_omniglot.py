"""The memory-augmented network of Santoro et al. (2016) on Omniglot: accuracy by instance of a class.

    .venv/bin/python benchmarks/mann_omniglot.py --minutes 15
    .venv/bin/python benchmarks/mann_omniglot.py --minutes 0.5 --test-episodes 50   # smoke run

The ``mann-omniglot`` preset (LSTM controller of 200, memory 128 x 40, 4 read heads, 20x20 images, 5-way episodes of
50 images: 10 of each class, shuffled, each image given the previous label) trained for ``--minutes`` (validation
excluded; the paper trained for 100,000 episodes), then tested the paper's way on ``--test-episodes`` episodes of
held-out characters (Vinyals split test classes): accuracy at the 1st, 2nd, 3rd, 5th and 10th presentation of a
class, mean and 95% CI over episodes, beside Santoro et al.'s Table 1 (5-way: 36.4 / 82.8 / 91.0 / 92.6 / 94.9%).
Writes ``benchmarks/results/mann_omniglot.json`` and ``mann_omniglot.png``.
"""

from __future__ import annotations

import argparse
import time

from common import RESULTS, WORK, header, train_with_curve

from fewshot import io
from fewshot.algorithms.mann import instance_accuracy
from fewshot.config import TrainConfig
from fewshot.datasets import load_split
from fewshot.presets import PRESETS
from fewshot.runs import load_run
from fewshot.tasks.episodes import EpisodeSampler

PAPER = {1: 36.4, 2: 82.8, 3: 91.0, 5: 92.6, 10: 94.9}  # Santoro et al. 2016, Table 1, MANN (LRUA), 5 classes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=15.0, help="training time")
    parser.add_argument("--test-episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = TrainConfig.of(
        **PRESETS["mann-omniglot"].settings | dict(max_minutes=args.minutes, seed=args.seed)
    )
    run_dir = WORK / "mann-omniglot"
    print(f"training the MANN for {args.minutes} min -> {run_dir}", flush=True)
    trained = train_with_curve(config, run_dir)
    run = load_run(run_dir, "best")
    data = load_split(run.config, "test")
    sampler = EpisodeSampler(data.labels, 5, 5, 5, args.test_episodes, args.seed)  # 10 images of each class
    start = time.perf_counter()
    run.model.eval()
    by_instance = instance_accuracy(
        run.model, run.params, (sampler.task(data, i) for i in range(args.test_episodes)), seed=args.seed
    )
    results = header("mann_omniglot", args.seed, trained=trained, test_episodes=args.test_episodes,
                     eval_seconds=time.perf_counter() - start,
                     instances=[{"instance": i, "mean": m, "ci95": c, "episodes": n, "paper": PAPER[i]}
                                for i, (m, c, n) in by_instance.items()])  # fmt: skip
    io.write_json(RESULTS / "mann_omniglot.json", results)
    print(markdown_table(results))
    plot(results)


def markdown_table(results: dict) -> str:
    t = results["trained"]
    lines = ["| instance | fewshot (95% CI) | Santoro et al. 2016 |", "|---|---|---|"]
    for row in results["instances"]:
        lines.append(
            f"| {row['instance']} | {100 * row['mean']:.1f} +- {100 * row['ci95']:.1f} | {row['paper']} |"
        )
    lines.append(f"\n{t['train_seconds'] / 60:.1f} min of training, {t['steps']} steps of 16 episodes")
    return "\n".join(lines)


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["instances"]
    xs = [r["instance"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.errorbar(xs, [100 * r["mean"] for r in rows], [100 * r["ci95"] for r in rows], marker="o", capsize=3,
                label=f"fewshot, {results['trained']['train_seconds'] / 60:.0f} min")  # fmt: skip
    ax.plot(xs, [r["paper"] for r in rows], marker="s", linestyle="--", label="Santoro et al. 2016")
    ax.set_xlabel("instance of the class in the episode")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("MANN, Omniglot 5-way, held-out characters")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "mann_omniglot.png", dpi=120)


if __name__ == "__main__":
    main()
