"""Robustness on Omniglot 5-way 1-shot: MAML, ADML and ProtoNet, clean and under attack, on the same episodes.

    .venv/bin/python benchmarks/adml_omniglot.py                          # 800 meta-steps each, 600 episodes
    .venv/bin/python benchmarks/adml_omniglot.py --steps 2 --protonet-steps 2 --val-episodes 5 --episodes 5 --out /tmp/adml.json   # smoke run

Models (Vinyals split, 28x28, bfloat16 autocast in training, Adam 1e-3, seed ``--seed``):

* ``maml``: second-order MAML, 5-way 1-shot, 16 tasks a step, 1 inner step of 0.4 (10 at test).
* ``adml``: ADML (Yin et al. 2018) with the same settings, trained on FGSM examples of ``--train-epsilon``
  (the paper's attack) in both loops.
* ``protonet``: ProtoNet trained 60-way 1-shot (Snell et al.'s 1-shot setting) as the third row.

MAML and ADML take the same number of meta-steps (``--steps``: the same tasks, the same number of updates); an
ADML step costs about 2.5x a MAML step (two adaptations and two attacks), so the wall times are reported beside.
ProtoNet takes ``--protonet-steps``. Each model is tested on ``--episodes`` 5-way 1-shot episodes (15 queries
per class, episode seed ``--seed``): clean accuracy and accuracy under white-box attacks against the adapted
learner: PGD (10 steps of 2.5 * epsilon / 10, random start) at epsilon 0.1 and 0.2 and FGSM at 0.2, pixels in
[0, 1]. Results go to ``benchmarks/results/adml_omniglot.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import RESULTS, WORK, header, train_with_curve

from fewshot import io
from fewshot.attacks import Attack
from fewshot.config import TrainConfig
from fewshot.datasets import load_split
from fewshot.evaluate import evaluate
from fewshot.runs import load_run

ATTACKS = [Attack("pgd", 0.1), Attack("pgd", 0.2), Attack("fgsm", 0.2)]


def models(args: argparse.Namespace) -> dict[str, dict]:
    gradient = dict(ways=5, shots=1, queries=15, tasks_per_step=16, inner_lr=0.4, steps=args.steps)
    return {
        "maml": dict(algorithm="maml", **gradient),
        "adml": dict(algorithm="adml", attack="fgsm", epsilon=args.train_epsilon, **gradient),
        "protonet": dict(algorithm="protonet", ways=60, shots=1, queries=5, steps=args.protonet_steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=800, help="meta-steps of MAML and of ADML")
    parser.add_argument("--protonet-steps", type=int, default=2000)
    parser.add_argument("--train-epsilon", type=float, default=0.2, help="ADML's FGSM radius in training")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--val-episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=["maml", "adml", "protonet"])
    parser.add_argument("--out", type=Path, default=RESULTS / "adml_omniglot.json")
    args = parser.parse_args()

    results = header("adml_omniglot", args.seed, steps=args.steps, train_epsilon=args.train_epsilon, models={},
                     test=[])  # fmt: skip
    for name in args.models:
        config = TrainConfig.of(**models(args)[name], val_every=max(args.steps // 4, 1), val_episodes=args.val_episodes,
                                bf16=True, seed=args.seed)  # fmt: skip
        run_dir = WORK / f"adml-{name}"
        print(f"training {name} -> {run_dir}", flush=True)
        trained = results["models"][name] = train_with_curve(config, run_dir)
        run = load_run(run_dir, "best")
        data = load_split(run.config, "test")
        row = {"model": name, "train_minutes": trained["train_seconds"] / 60, "train_steps": trained["steps"]}
        for attack in ATTACKS:
            r = evaluate(run.algorithm(testing=True), run.model, data, 5, 1, 15, args.episodes, args.seed,
                         params=run.params, progress=False, attack=attack)  # fmt: skip
            row["clean"] = {"mean": r.mean, "ci95": r.ci95, "episodes": r.episodes}
            row[f"{attack.kind}_{attack.epsilon:g}"] = {
                "mean": r.adversarial_mean, "ci95": r.adversarial_ci95, "seconds": r.seconds,
            }  # fmt: skip
            print(f"  {name}: {r}", flush=True)
        results["test"].append(row)
        io.write_json(args.out, results)  # after each model, so a long run keeps what it has
    print(markdown_table(results))


def markdown_table(results: dict) -> str:
    keys = [f"{a.kind}_{a.epsilon:g}" for a in ATTACKS]
    lines = [
        "| model | training | clean | " + " | ".join(k.replace("_", " eps ") for k in keys) + " |",
        "|---|---|---|" + "---|" * len(keys),
    ]
    for row in results["test"]:
        cells = [f"{100 * row[k]['mean']:.2f} ± {100 * row[k]['ci95']:.2f}" for k in ["clean", *keys]]
        lines.append(f"| {row['model']} | {row['train_steps']} steps, {row['train_minutes']:.1f} min | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
