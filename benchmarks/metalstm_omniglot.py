"""The meta-learner LSTM (Ravi & Larochelle 2017) beside MAML on Omniglot 5-way 1-shot and 5-shot, same budget.

    .venv/bin/python benchmarks/metalstm_omniglot.py                      # 8 minutes per model and setting
    .venv/bin/python benchmarks/metalstm_omniglot.py --minutes 0.2 --episodes 20 --out /tmp/ml.json   # smoke

Both learners are the same conv4 with 32 channels (Ravi & Larochelle's learner; BatchNorm on batch statistics),
28x28 images of the Vinyals split, 8 tasks a step, Adam 1e-3, float32, ``--minutes`` of training each
(validation excluded), one model per setting; the best-validation checkpoint is tested.

* ``metalstm``: the learner's weights are the cell state of the meta-learner's LSTM (20 units, preprocessed
  loss and gradient in, learned input and forget gates), 5 updates per task on the whole support set in
  1-shot, 8 in 5-shot (the authors' configurations), the same number at test.
* ``maml``: second-order MAML, 1 inner step of 0.4 in training, 10 at test (Finn et al.).

Each is tested on ``--episodes`` episodes (15 queries per class, seed ``--seed``), mean and 95% CI; the
papers' miniImageNet numbers (meta-learner LSTM 43.44 / 60.60, MAML 48.70 / 63.11) are quoted for context only.
Results: ``benchmarks/results/metalstm_omniglot.json`` and ``metalstm_omniglot_curve.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import RESULTS, WORK, header, plot_curves, train_with_curve

from fewshot import io
from fewshot.config import TrainConfig
from fewshot.datasets import load_split
from fewshot.evaluate import evaluate
from fewshot.runs import load_run

COMMON = dict(ways=5, queries=15, tasks_per_step=8, hidden=32, outer_lr=1e-3)
OWN = {
    "metalstm": lambda shots: dict(algorithm="metalstm", inner_steps=5 if shots == 1 else 8),
    "maml": lambda shots: dict(algorithm="maml", inner_lr=0.4, inner_steps=1, test_inner_steps=10),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--models", nargs="+", default=list(OWN), choices=list(OWN))
    parser.add_argument("--out", type=Path, default=RESULTS / "metalstm_omniglot.json")
    args = parser.parse_args()

    results = header("metalstm_omniglot", args.seed, minutes_per_model=args.minutes, models={}, test=[])
    for shots in args.shots:
        for name in args.models:
            config = TrainConfig.of(**COMMON, **OWN[name](shots), shots=shots, steps=1_000_000,
                                    max_minutes=args.minutes, val_every=50, val_episodes=100, val_ways=5,
                                    val_shots=shots, seed=args.seed)  # fmt: skip
            key = f"{name}-5w{shots}s"
            run_dir = WORK / f"metalstm-{key}"
            print(f"training {key} for {args.minutes} min -> {run_dir}", flush=True)
            trained = results["models"][key] = train_with_curve(config, run_dir)
            run = load_run(run_dir, "best")
            start = time.perf_counter()
            r = evaluate(run.algorithm(testing=True), run.model, load_split(run.config, "test"), 5, shots, 15,
                         args.episodes, args.seed, params=run.params, progress=False)  # fmt: skip
            results["test"].append({
                "model": name, "ways": 5, "shots": shots, "episodes": r.episodes, "mean": r.mean, "ci95": r.ci95,
                "train_minutes": trained["train_seconds"] / 60, "train_steps": trained["steps"],
                "eval_seconds": time.perf_counter() - start,
            })  # fmt: skip
            print(f"  {key}: {r} after {trained['steps']} steps", flush=True)
            io.write_json(args.out, results)
    plot_curves(results["models"], args.out.with_name(args.out.stem + "_curve.png"),
                "Meta-learner LSTM and MAML, Omniglot (validation)")  # fmt: skip
    lines = ["| setting | model | accuracy (95% CI) | training |", "|---|---|---|---|"]
    for row in results["test"]:
        lines.append(f"| 5-way {row['shots']}-shot | {row['model']} | {100 * row['mean']:.2f} ± "
                     f"{100 * row['ci95']:.2f} | {row['train_minutes']:.1f} min, {row['train_steps']} steps |")  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()
