"""Bandit runs and classical strategies side by side on identical bandits: ``fewshot compare`` for meta-RL.

``fewshot compare RUN... [random | greedy | eps-greedy[:E] | ucb1[:C] | thompson | gittins | baselines]`` lands
here when the runs play bandits. Every method plays the first run's test bandits (the same reward tables and the
same uniforms), so per-bandit totals pair up and the paired difference to the best method gets its own, tighter,
95% CI. Outputs: ``compare_bandit.md`` and ``.json``, and ``regret_bandit.png`` (mean cumulative regret against
the time step, with the 95% band of the final regret in the legend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewshot import io
from fewshot.compare import _pyplot, _save
from fewshot.rl.bandits import Bandits
from fewshot.rl.evaluate import (
    BanditResult,
    evaluate_bandits,
    model_player,
    paired,
    strategy,
    strategy_player,
)
from fewshot.rl.strategies import GITTINS_HORIZON, STRATEGIES

ALL = tuple(STRATEGIES)  # what `baselines` stands for


def is_bandit(specs: list[str]) -> bool:
    """Whether the first run directory among ``specs`` plays bandits."""
    from fewshot.runs import RunDir

    for spec in specs:
        run_dir = RunDir(spec.rpartition("=")[2])
        if run_dir.is_run():
            return run_dir.config().data == "bandit"
    return False


def prepare_bandits(specs: list[str], device: Any = None) -> tuple[list[tuple[str, Any]], Bandits]:
    """``([(label, player)], the first run's test bandits)`` for ``[label=]RUN`` and strategy names."""
    from fewshot.datasets import load_split
    from fewshot.runs import RunDir

    players: list[tuple[str, Any]] = []
    family = None
    for spec in specs:
        label, _, name = spec.rpartition("=")
        if name == "baselines":
            players += [(n, strategy_player(strategy(n))) for n in ALL]
            continue
        if name.partition(":")[0] in STRATEGIES:
            players.append((label or name, strategy_player(strategy(name))))
            continue
        run_dir = RunDir(name)
        if not run_dir.is_run():
            raise ValueError(
                f"{name!r} is neither a run directory nor a bandit strategy ({', '.join(ALL)}, baselines)"
            )
        run = run_dir.load("best", device)
        config = run.config
        if config.data != "bandit":
            raise ValueError(f"{name} is a {config.data} run; bandit runs are compared with bandit runs")
        runs_family = load_split(config, config.test_split)
        if family is None:
            family = runs_family
        elif (runs_family.arms, runs_family.horizon, runs_family.prior, runs_family.dependent) != (
            family.arms, family.horizon, family.prior, family.dependent
        ):  # fmt: skip
            raise ValueError(
                f"{name} plays other bandits than the first run ({runs_family.arms} arms, horizon {runs_family.horizon}, "
                f"{runs_family.prior}; the first: {family.arms} arms, horizon {family.horizon}, {family.prior}): "
                "compare runs of one setting"
            )
        players.append((label or name, model_player(run.algorithm(testing=True), run.model, run.params)))
    if family is None:
        raise ValueError("give at least one bandit run directory: its test bandits are the ones played")
    labels = [label for label, _ in players]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ValueError(
            f"{', '.join(twice)} given twice; give each method once (or a label=METHOD of its own)"
        )
    if "gittins" in labels and family.horizon > GITTINS_HORIZON:
        raise ValueError(
            f"gittins is computed up to horizon {GITTINS_HORIZON}; this run's is {family.horizon}"
        )
    return players, family


def compare_bandits(players: list[tuple[str, Any]], family: Bandits, episodes: int = 1000, progress: bool = True
                    ) -> dict[str, Any]:  # fmt: skip
    """Every player on bandits ``0..episodes-1`` of ``family``: rows with total reward, regret, paired difference."""
    results: list[BanditResult] = [
        evaluate_bandits(p, family, episodes, label, progress) for label, p in players
    ]
    best = max(results, key=lambda r: r.mean)
    rows = []
    for r in results:
        diff, ci = paired(r, best) if r is not best else (0.0, 0.0)
        rows.append({"method": r.method, "mean": r.mean, "ci95": r.ci95, "regret": r.regret,
                     "regret_ci95": r.regret_ci95, "diff_to_best": diff, "diff_to_best_ci95": ci,
                     "seconds": r.seconds, "regret_curve": r.regret_curve, "totals": r.totals})  # fmt: skip
    return {"arms": family.arms, "horizon": family.horizon, "prior": family.prior, "dependent": family.dependent,
            "episodes": episodes, "seed": family.seed, "best": best.method, "rows": rows}  # fmt: skip


def markdown_bandits(table: dict[str, Any]) -> str:
    kind = "dependent two-armed" if table["dependent"] else f"{table['arms']}-armed"
    head = (
        f"{kind} Bernoulli bandits ({table['prior']} arm means), horizon {table['horizon']}, {table['episodes']} "
        f"identical test bandits (seed {table['seed']}); mean and 95% CI.\n\n"
        "| method | total reward | regret | paired difference to best | seconds |\n|---|---|---|---|---|\n"
    )
    lines = []
    for r in table["rows"]:
        diff = (
            "best"
            if r["method"] == table["best"]
            else f"{r['diff_to_best']:+.2f} ± {r['diff_to_best_ci95']:.2f}"
        )
        lines.append(f"| {r['method']} | {r['mean']:.2f} ± {r['ci95']:.2f} | {r['regret']:.2f} ± "
                     f"{r['regret_ci95']:.2f} | {diff} | {r['seconds']:.1f} |")  # fmt: skip
    return head + "\n".join(lines) + "\n"


def regret_plot(table: dict[str, Any], path: Path) -> None:
    """Mean cumulative regret against the time step, one line per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in table["rows"]:
        label = f"{r['method']} ({r['regret']:.2f} ± {r['regret_ci95']:.2f})"
        ax.plot(range(1, len(r["regret_curve"]) + 1), r["regret_curve"], label=label)
    ax.set_xlabel("pull")
    ax.set_ylabel("mean cumulative regret")
    ax.set_title(f"{table['arms']} arms, horizon {table['horizon']}, {table['episodes']} bandits")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_bandits(out_dir: Path, table: dict[str, Any], plots: bool = True) -> list[Path]:
    """``compare_bandit_<arms>a<horizon>n`` .md and .json, and ``regret_...png``, each by temp file + rename."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"bandit_{table['arms']}a{table['horizon']}n"
    written = [out_dir / f"compare_{stem}.md", out_dir / f"compare_{stem}.json"]
    io.write_text(written[0], markdown_bandits(table))
    io.write_json(written[1], table)
    if plots:
        written.append(out_dir / f"regret_{stem}.png")
        regret_plot(table, written[-1])
    return written
