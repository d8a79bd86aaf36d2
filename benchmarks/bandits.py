"""Meta-RL on Bernoulli bandits: Duan et al. (2016) Table 1's cells and Wang et al. (2016)'s dependent bandit.

    .venv/bin/python benchmarks/bandits.py                                   # every cell, ~70 minutes
    .venv/bin/python benchmarks/bandits.py --cells 5x10 --rl2-minutes 0.2 --maml-minutes 0.1 --episodes 100 \\
        --out /tmp/b.json                                                    # smoke

Cells ``KxN`` are K-armed bandits of horizon N with arm means U[0, 1] (Duan et al.); ``dep100`` is the two-armed
dependent bandit of Wang et al. (p_1 ~ U[0, 1], p_2 = 1 - p_1), horizon 100. In each cell:

* RL² (a GRU of ``--hidden`` units; A2C on 256 trials a step, Adam 3e-3, gamma 0.9, GAE lambda 0.95, entropy
  bonus 0.05 annealed to 0.005 over 4000 steps) is trained for ``--rl2-minutes`` (``--rl2-minutes-short`` when
  N <= 10), validated on 300 bandits of its own stream; the best checkpoint is tested, sampling its actions.
* MAML-RL (second order, an MLP policy, a REINFORCE step after each block of pulls) for ``--maml-minutes``.
* epsilon-greedy's epsilon and UCB1's c are tuned on 500 training bandits over {0, 0.1, ..., 1} (as Duan et al.
  tuned theirs); random, greedy, Thompson sampling (Beta(1, 1)) and the finite-horizon Gittins index need no tuning.
* every method plays the same ``--episodes`` test bandits (the same reward draws): total reward with 95% CI, and
  the paired difference to the best, as ``fewshot compare`` reports it; a regret-against-time plot per cell.

Results: ``benchmarks/results/bandits.json``, the tables and plots in ``benchmarks/results/bandits/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import RESULTS, WORK, header, train_with_curve

from fewshot import io
from fewshot.config import TrainConfig
from fewshot.datasets import load_split
from fewshot.rl.compare import compare_bandits, markdown_bandits, write_bandits
from fewshot.rl.evaluate import model_player, strategy, strategy_player, tune
from fewshot.runs import load_run

GRID = [round(0.1 * i, 1) for i in range(11)]


def cell_settings(cell: str) -> dict:
    if cell.startswith("dep"):
        return dict(dataset="dependent-bandit", horizon=int(cell[3:]))
    arms, horizon = (int(v) for v in cell.split("x"))
    return dict(dataset="bandit", arms=arms, horizon=horizon)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", nargs="+", default=["5x10", "10x10", "5x100", "10x100", "dep100"])
    parser.add_argument("--rl2-minutes", type=float, default=15.0)
    parser.add_argument("--rl2-minutes-short", type=float, default=4.0, help="RL² budget when horizon <= 10")
    parser.add_argument("--maml-minutes", type=float, default=2.0)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "bandits.json")
    args = parser.parse_args()

    results = header("bandits", args.seed, rl2_minutes=args.rl2_minutes, rl2_minutes_short=args.rl2_minutes_short,
                     maml_minutes=args.maml_minutes, cells={})  # fmt: skip
    folder = args.out.with_suffix("")
    for cell in args.cells:
        data = cell_settings(cell)
        short = data["horizon"] <= 10
        rl2 = TrainConfig.of(algorithm="rl2", **data, hidden=args.hidden, tasks_per_step=256, outer_lr=3e-3,
                             gamma=0.9, gae_lambda=0.95, entropy=0.05, entropy_final=0.005, entropy_steps=4000,
                             lr_schedule="constant", steps=1_000_000,
                             max_minutes=args.rl2_minutes_short if short else args.rl2_minutes,
                             val_every=200 if short else 250, val_episodes=300, log_every=50, seed=args.seed)  # fmt: skip
        maml = TrainConfig.of(algorithm="maml-rl", **data, hidden=32, tasks_per_step=64, outer_lr=1e-3,
                              inner_lr=1.0, inner_steps=1 if short else 4, lr_schedule="constant", steps=1_000_000,
                              max_minutes=args.maml_minutes, val_every=50, val_episodes=300, log_every=50,
                              seed=args.seed)  # fmt: skip
        entry = results["cells"][cell] = {"settings": data, "models": {}}
        players = []
        for name, config in (("rl2", rl2), ("maml-rl", maml)):
            run_dir = WORK / f"bandits-{cell}-{name}"
            print(f"{cell}: training {name} for {config.max_minutes} min -> {run_dir}", flush=True)
            entry["models"][name] = train_with_curve(config, run_dir)
            run = load_run(run_dir, "best")
            players.append((name, model_player(run.algorithm(testing=True), run.model, run.params)))
        train_family = load_split(rl2, "train")
        eps = tune([f"eps-greedy:{e}" for e in GRID], train_family, 500)
        ucb = tune([f"ucb1:{c}" for c in GRID], train_family, 500)
        entry["tuned"] = {"epsilon": eps.epsilon, "ucb1_c": ucb.c}
        players += [(n, strategy_player(strategy(n))) for n in ("random", "greedy")]
        players += [
            (f"eps-greedy ({eps.epsilon:g})", strategy_player(eps)),
            (f"ucb1 (c {ucb.c:g})", strategy_player(ucb)),
        ]
        players += [(n, strategy_player(strategy(n))) for n in ("thompson", "gittins")]
        table = compare_bandits(players, load_split(rl2, "test"), args.episodes, progress=False)
        entry["table"] = {k: v for k, v in table.items() if k != "rows"} | {
            "rows": [{k: v for k, v in r.items() if k != "totals"} for r in table["rows"]]
        }
        files = write_bandits(folder, table)
        print(markdown_bandits(table), flush=True)
        print("wrote " + ", ".join(str(f) for f in files), flush=True)
        io.write_json(args.out, results)
    print(summary(results))


def summary(results: dict) -> str:
    """One Markdown table: the total reward of every method in every cell, and the training each model had."""
    cells = results["cells"]
    methods = [r["method"].split(" (")[0] for r in next(iter(cells.values()))["table"]["rows"]]
    lines = ["| method | " + " | ".join(cells) + " |", "|---" * (len(cells) + 1) + "|"]
    for i, m in enumerate(methods):
        row = [
            f"{c['table']['rows'][i]['mean']:.2f} ± {c['table']['rows'][i]['ci95']:.2f}"
            for c in cells.values()
        ]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    for name in ("rl2", "maml-rl"):
        row = [f"{c['models'][name]['train_seconds'] / 60:.1f} min, {c['models'][name]['steps']} steps"
               for c in cells.values()]  # fmt: skip
        lines.append(f"| {name} training | " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
