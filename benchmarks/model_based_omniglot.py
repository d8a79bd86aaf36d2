"""SNAIL and the transformer in-context classifier on Omniglot (Vinyals split), beside SNAIL's paper and ProtoNet.

    .venv/bin/python benchmarks/model_based_omniglot.py                      # every model, 15 minutes each
    .venv/bin/python benchmarks/model_based_omniglot.py --models icl --minutes 1 --test-episodes 50   # smoke run

Models (each trained for ``--minutes``, validation excluded, bfloat16 autocast, Adam 1e-3; the checkpoint with the
best validation accuracy is tested):

* ``icl``: one in-context transformer (width 128, 4 blocks, 8 heads on conv4 embeddings) trained on episodes of 1
  to 5 shots (drawn per task) whose ways grow from 5 to 20 by 5 every 250 steps (``--curriculum ways=5+5``: the
  5-way stage gets it off the loss plateau of in-context learning sooner; each task's classes take random label
  slots of the 20, so all are trained), 8 tasks a step, tested at all four settings: one network for every
  number of ways up to 20 and shots up to 5.
* ``snail-5w1s``, ``snail-5w5s``, ``snail-20w1s``, ``snail-20w5s``: SNAIL (the paper's Omniglot network on conv4
  embeddings), one model per setting, as in Mishra et al. (2018).

Each is tested on ``--test-episodes`` episodes (15 queries per class, seed ``--seed``), mean and 95% CI, beside
Mishra et al.'s Table 1 (99.07 / 99.78 / 97.64 / 99.36) and fewshot's ProtoNet trained for the same 15 minutes
(``benchmarks/results/protonet_omniglot.json``). Results go to ``benchmarks/results/model_based_omniglot.json``
(kept per model, so ``--models`` reruns one) and its validation curves to ``model_based_omniglot_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import RESULTS, WORK, header, plot_curves, train_with_curve

from fewshot import io
from fewshot.config import TrainConfig
from fewshot.datasets import load_split
from fewshot.evaluate import evaluate
from fewshot.runs import load_run

PAPER = {(5, 1): 99.07, (5, 5): 99.78, (20, 1): 97.64, (20, 5): 99.36}  # Mishra et al. 2018, Table 1
SETTINGS = [(5, 1), (5, 5), (20, 1), (20, 5)]
TASKS_PER_STEP = {(5, 1): 16, (5, 5): 16, (20, 1): 8, (20, 5): 4}  # ~500-1000 images a step
MODELS = {
    "icl": dict(algorithm="icl", ways=20, shots=5, queries=5, tasks_per_step=8, val_ways=5, val_shots=1,
                curriculum="ways=5+5", curriculum_every=250),
    **{
        f"snail-{w}w{s}s": dict(
            algorithm="snail", ways=w, shots=s, queries=5, tasks_per_step=TASKS_PER_STEP[w, s], val_ways=w,
            val_shots=s,
        )
        for w, s in SETTINGS
    },
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--minutes", type=float, default=15.0, help="training time per model")
    parser.add_argument("--test-episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--out", default=str(RESULTS / "model_based_omniglot.json"))
    args = parser.parse_args()

    results = header("model_based_omniglot", args.seed, minutes_per_model=args.minutes, models={}, test=[])
    out = Path(args.out)
    if out.is_file():  # keep the other models' results
        old = json.loads(out.read_text())
        results["models"] = {k: v for k, v in old["models"].items() if k not in args.models}
        results["test"] = [r for r in old["test"] if r["model"] not in args.models]
        results["earlier_commands"] = sorted({old["command"], *old.get("earlier_commands", [])})
    for name in args.models:
        settings = MODELS[name]
        config = TrainConfig.of(
            **settings, steps=1_000_000, max_minutes=args.minutes, val_every=args.val_every, val_episodes=200,
            bf16=True, seed=args.seed,
        )  # fmt: skip
        run_dir = WORK / f"model-based-{name}"
        print(f"training {name} for {args.minutes} min -> {run_dir}", flush=True)
        trained = results["models"][name] = train_with_curve(config, run_dir)
        run = load_run(run_dir, "best")
        test_data = load_split(run.config, "test")
        tested = SETTINGS if name == "icl" else [(settings["ways"], settings["shots"])]
        for ways, shots in tested:
            start = time.perf_counter()
            r = evaluate(run.algorithm(), run.model, test_data, ways, shots, 15, args.test_episodes, args.seed,
                         params=run.params, progress=False)  # fmt: skip
            results["test"].append(
                {
                    "model": name,
                    "ways": ways,
                    "shots": shots,
                    "episodes": r.episodes,
                    "mean": r.mean,
                    "ci95": r.ci95,
                    "paper": PAPER[ways, shots],
                    "eval_seconds": time.perf_counter() - start,
                    "train_minutes": trained["train_seconds"] / 60,
                    "train_steps": trained["steps"],
                    "parameters": sum(p.numel() for p in run.params.values()),
                }  # fmt: skip
            )
            print(f"  {name}: {r}   (SNAIL paper {PAPER[ways, shots]})", flush=True)
        io.write_json(out, results)  # after each model, so a long run keeps what it has
    plot_curves(results["models"], out.with_name("model_based_omniglot_curve.png"),
                "Model-based learners, Omniglot (5-way or own-setting validation)")  # fmt: skip
    print(markdown_table(results))


def markdown_table(results: dict) -> str:
    protonet = {}
    path = RESULTS / "protonet_omniglot.json"
    if path.is_file():
        protonet = {(r["ways"], r["shots"]): r for r in json.loads(path.read_text())["test"]}
    lines = [
        "| setting | model | fewshot (95% CI) | SNAIL paper | ProtoNet, 15 min (95% CI) | training | test episodes |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in sorted(results["test"], key=lambda r: (r["ways"], r["shots"], r["model"])):
        p = protonet.get((row["ways"], row["shots"]))
        proto = f"{100 * p['mean']:.2f} +- {100 * p['ci95']:.2f}" if p else "not run"
        lines.append(
            f"| {row['ways']}-way {row['shots']}-shot | {row['model']} | {100 * row['mean']:.2f} +- "
            f"{100 * row['ci95']:.2f} | {row['paper']} | {proto} | {row['train_minutes']:.1f} min, "
            f"{row['train_steps']} steps | {row['episodes']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
