"""Build the five networks shipped for ``fewshot serve`` into ``src/fewshot/data/web/``.

    .venv/bin/python scripts/build_web_models.py                   # about 22 minutes on 2 cores
    .venv/bin/python scripts/build_web_models.py --only np         # some: sinusoid, protonet, incontext, np
    .venv/bin/python scripts/build_web_models.py --quick           # a smoke run (bad models) into /tmp/fewshot-web

Everything is seeded and runs a fixed number of steps (never a wall-clock budget), so a rerun on the same
machine and torch version writes the same weights (checked with --quick: the files differ only in the training
times recorded in their metadata).

* MAML on sinusoids: the 1-40-40-1 MLP, K = 10 support and 10 query points, 25 tasks per step, one inner SGD
  step of inner_lr 0.01, Adam 1e-3 (Finn et al. 2017, section 5.1; they ran 70,000 steps).
* The "pretrained" contrast: the same MLP fitted to all training tasks' points as one regression problem
  (:func:`fewshot.baselines.pretrain_jointly`), as many steps and tasks.
* ProtoNet on Omniglot: conv4, 60-way 5-shot 5-query episodes (Snell et al. 2017), Adam 1e-3, bfloat16 autocast,
  on the embedded copy's training classes (Vinyals split).
* The in-context learner: a decoder-only transformer (width 64, 3 blocks, 2 heads) trained as Garg et al. (2022)
  on prompts of 20 points and a query of 1-D lines ``y = w x + noise``, ``x, w ~ N(0, 1)``, noise sd 0.5, 64
  prompts per step, Adam 1e-3 at a constant rate, every prefix's next label scored; one thread. Its weights are
  rounded to float16 (the file is half the size), and measured after that.
* The neural process beside MAML (``--only np``): an attentive neural process (Kim et al. 2019, deterministic
  path; width 128, 8 heads) on the MAML model's tasks (seed, step -> the same 25 tasks of 10 support and 10
  query points, x in [-5, 5]). Each step a seeded draw picks a context size k in 0..10: the first k of a task's
  20 points are the context and all 20 the targets (as in both neural-process papers), so it learns its prior
  (k = 0) and every count of points the page sends up to 10. Adam 1e-3 annealed to 0 (cosine) on the targets'
  Gaussian log-likelihood, one thread; float16 weights, measured after that rounding.

It then measures what the pages show: sinusoid query MSE after 0, 1, 5 and 10 steps (inner_lr 0.01) on 600
held-out tasks for both MLPs, ProtoNet's 5-way 1-shot and 5-shot accuracy on 600 test episodes of held-out
alphabets (:func:`fewshot.evaluate.evaluate`), and the in-context query squared error against the number of
examples k = 0..20 on 1000 held-out prompts for the transformer and the baselines of
:func:`fewshot.regression_baselines.prompt_baselines` (least squares, ridge, 3-NN, averaging, one tuned GD step),
every method on the same prompts, and the neural process's query MSE and Gaussian negative log-likelihood
(nats per target) with K = 5, 10 and 20 context points and 10 query points on 600 held-out sinusoids (the MLPs'
test tasks). The numbers are printed and stored in each file's metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

from fewshot import ProtoNet, evaluate, omniglot  # noqa: E402
from fewshot.algorithms.base import parameters_of  # noqa: E402
from fewshot.algorithms.lsa import InContext  # noqa: E402
from fewshot.algorithms.maml import MAML  # noqa: E402
from fewshot.algorithms.neural_process import NeuralProcessLearner, task_nll  # noqa: E402
from fewshot.baselines import pretrain_jointly  # noqa: E402
from fewshot.config import TrainConfig  # noqa: E402
from fewshot.evaluate import evaluate_regression, mean_ci95  # noqa: E402
from fewshot.regression_baselines import prompt_baselines  # noqa: E402
from fewshot.tasks.episodes import Split, Task  # noqa: E402
from fewshot.tasks.linear import FunctionTasks  # noqa: E402
from fewshot.tasks.regression import Sinusoid  # noqa: E402
from fewshot.train import Trainer  # noqa: E402
from fewshot.web.models import (  # noqa: E402
    ANP_FILE,
    INCONTEXT_FILE,
    MAML_FILE,
    OMNIGLOT_FILE,
    PRETRAINED_FILE,
    WEB_DATA,
    save_model,
    sinusoid_anp,
    sinusoid_mlp,
)

INNER_LR = 0.01  # Finn et al. 2017, sinusoid regression
SHOTS = 10
TEST_STEPS = (0, 1, 5, 10)
TEST_SEED = 2_000_003  # the test stream of fewshot.datasets.load_split (sinusoids, lines): no training task
NOISE = 0.5  # label noise of the in-context lines: ridge with penalty 0.25 is then the Bayes-optimal answer
MAX_EXAMPLES = 20  # in-context examples per training prompt (and the most the page takes)
BUILDS = ("sinusoid", "protonet", "incontext", "np")
INCONTEXT_STEPS = 2500  # about 3.5 minutes on one thread (measured: see the README)
INCONTEXT_LR = 1e-3
ANP_STEPS = 24000  # about 7 minutes on one thread (measured: see the README)
ANP_LR = 1e-3  # Adam's starting rate, annealed to 0 (cosine) over the steps
ANP_CONTEXTS = (5, 10, 20)  # context sizes K of the held-out measurement (20: more than in training)


def sinusoid_mse(model: torch.nn.Module, tasks: int) -> dict[str, list[float]]:
    """Query MSE (mean, 95% CI) after each of TEST_STEPS SGD steps of inner_lr on held-out tasks."""
    family = Sinusoid(shots=SHOTS, queries=SHOTS, seed=TEST_SEED)
    out = {}
    for steps in TEST_STEPS:
        r = evaluate_regression(
            MAML(inner_lr=INNER_LR, inner_steps=steps), model, family, tasks, progress=False
        )
        out[str(steps)] = [round(r.mean, 4), round(r.ci95, 4)]
    return out


def incontext_errors(model: torch.nn.Module, prompts: int) -> dict:
    """The query squared error against the number of in-context examples k = 0..MAX_EXAMPLES, mean and 95% CI
    over ``prompts`` held-out prompts of noisy lines, for the transformer and every baseline of
    :func:`prompt_baselines` (gradient descent's rate tuned per k on other prompts), all on the same prompts."""
    params = dict(model.named_parameters())
    methods: dict[str, dict[str, list[float]]] = {}
    for k in range(MAX_EXAMPLES + 1):
        family = FunctionTasks(dim=1, shots=k, queries=1, noise=NOISE, seed=TEST_SEED)
        entries = {"transformer": (InContext(), model, params)}
        entries |= {name: (b, torch.nn.Identity(), {}) for name, b in prompt_baselines(family).items()}
        for name, (algorithm, net, p) in entries.items():
            with torch.no_grad():
                r = evaluate_regression(algorithm, net, family, prompts, p, False, "cpu")
            curve = methods.setdefault(name, {"mean": [], "ci95": []})
            curve["mean"].append(round(r.mean, 4))
            curve["ci95"].append(round(r.ci95, 4))
    return {"k": list(range(MAX_EXAMPLES + 1)), "prompts": prompts, "seed": TEST_SEED, "methods": methods}


def build_sinusoid(args: argparse.Namespace, work: Path) -> list[str]:
    """MAML and the jointly pretrained MLP on sinusoids (one thread: a 1-40-40-1 MLP is faster on one)."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    config = TrainConfig.of(
        algorithm="maml", dataset="sinusoid", shots=SHOTS, queries=SHOTS, steps=args.sinusoid_steps,
        tasks_per_step=25, inner_lr=INNER_LR, inner_steps=1, lr_schedule="constant", route="vmap",
        val_every=0, log_every=1000, seed=args.seed,
    )  # fmt: skip
    trainer = Trainer(config, work / "maml", progress=False)
    maml = trainer.run()
    maml_seconds = time.perf_counter() - start

    # the jointly pretrained MLP: the same tasks (seed, step -> tasks), no learning to adapt
    start = time.perf_counter()
    torch.manual_seed(args.seed)  # nn.Module initialisation, as the trainer does
    pretrained = pretrain_jointly(
        sinusoid_mlp(), Sinusoid(shots=SHOTS, queries=SHOTS, seed=args.seed), args.sinusoid_steps
    )
    pretrained_seconds = time.perf_counter() - start
    maml_mse, pretrained_mse = sinusoid_mse(maml, args.episodes), sinusoid_mse(pretrained, args.episodes)
    print(f"sinusoid MLPs: {args.sinusoid_steps} steps of 25 tasks, K={SHOTS}; query MSE on {args.episodes} "
          f"held-out tasks after k SGD steps of inner_lr {INNER_LR} (mean, 95% CI):")  # fmt: skip
    for k in TEST_STEPS:
        print(f"  {k:2d} steps: MAML {maml_mse[str(k)][0]:.3f} +- {maml_mse[str(k)][1]:.3f}   "
              f"pretrained {pretrained_mse[str(k)][0]:.3f} +- {pretrained_mse[str(k)][1]:.3f}")  # fmt: skip
    print(f"  training: MAML {maml_seconds:.0f} s, pretrained {pretrained_seconds:.0f} s", flush=True)
    sinusoid_training = {
        "shots": SHOTS, "queries": SHOTS, "tasks_per_step": 25, "steps": args.sinusoid_steps, "outer_lr": 1e-3,
        "inner_lr": INNER_LR, "seed": args.seed, "test_tasks": args.episodes, "test_seed": TEST_SEED,
    }  # fmt: skip
    save_model(args.out / MAML_FILE.name, maml, {
        "training": sinusoid_training | {"method": "maml", "inner_steps": 1, "seconds": round(maml_seconds)},
        "measured": {"query_mse_after_steps": maml_mse},
    })  # fmt: skip
    save_model(args.out / PRETRAINED_FILE.name, pretrained, {
        "training": sinusoid_training | {"method": "pretrain_jointly", "seconds": round(pretrained_seconds)},
        "measured": {"query_mse_after_steps": pretrained_mse},
    })  # fmt: skip
    return [MAML_FILE.name, PRETRAINED_FILE.name]


def anp_scores(model: torch.nn.Module, tasks: int) -> dict[str, dict[str, list[float]]]:
    """Query MSE of the predictive mean and Gaussian NLL (nats per target), mean and 95% CI, on ``tasks``
    held-out sinusoids with K = 5, 10 and 20 context points and SHOTS query points."""
    learner, params = NeuralProcessLearner(), dict(model.named_parameters())
    out: dict[str, dict[str, list[float]]] = {"query_mse": {}, "query_nll": {}}
    for k in ANP_CONTEXTS:
        family = Sinusoid(shots=k, queries=SHOTS, seed=TEST_SEED)
        mse = evaluate_regression(learner, model, family, tasks, params, False)
        nll_mean, nll_ci95 = mean_ci95(task_nll(model, params, family.task, tasks))
        out["query_mse"][str(k)] = [round(mse.mean, 4), round(mse.ci95, 4)]
        out["query_nll"][str(k)] = [round(nll_mean, 4), round(nll_ci95, 4)]
    return out


def train_anp(steps: int, seed: int, lr: float) -> torch.nn.Module:
    """The attentive neural process on the MAML model's task stream: step ``s`` takes tasks ``25 s .. 25 s + 24``
    of ``Sinusoid(shots=10, queries=10, seed)`` (20 points each); a seeded draw picks one context size ``k`` in
    0..10 for the step, the first ``k`` points are the context and all 20 the targets (the context among them,
    as in Garnelo et al. 2018 and Kim et al. 2019). So the network learns its prior, ``k = 0``, and every count
    of points the page gives it up to 10. Adam on the targets' Gaussian negative log-likelihood, its rate ``lr``
    annealed to 0 (cosine)."""
    torch.manual_seed(seed)  # nn.Module initialisation
    model = sinusoid_anp()
    family = Sinusoid(shots=SHOTS, queries=SHOTS, seed=seed)
    sizes = torch.Generator().manual_seed(seed)
    learner, params = NeuralProcessLearner(), parameters_of(model)
    opt = torch.optim.Adam(model.parameters(), lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for step in range(steps):
        k = int(torch.randint(0, SHOTS + 1, (), generator=sizes))
        tasks = []
        for i in range(25 * step, 25 * (step + 1)):
            t = family.task(i)
            x, y = torch.cat([t.support.x, t.query.x]), torch.cat([t.support.y, t.query.y])  # (20, 1) each
            tasks.append(Task(Split(x[:k], y[:k]), Split(x, y), ways=0))
        loss, _ = learner.batch_loss(model, params, tasks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if (step + 1) % 4000 == 0:
            print(f"  anp step {step + 1}: target NLL {loss.item():.3f} (k = {k})", flush=True)
    return model.eval()


def build_anp(args: argparse.Namespace, work: Path) -> list[str]:
    """The attentive neural process on sinusoids (one thread)."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    model = train_anp(args.np_steps, args.seed, ANP_LR)
    seconds = time.perf_counter() - start
    model.half().float()  # shipped as float16 (half the file): measure the weights that ship
    scores = anp_scores(model, args.episodes)
    print(f"attentive neural process: {args.np_steps} steps of 25 tasks (context k = 0..{SHOTS} of the {2 * SHOTS} "
          f"target points) in {seconds:.0f} s; on {args.episodes} held-out tasks with K context and {SHOTS} query "
          "points (mean, 95% CI):")  # fmt: skip
    for k in ANP_CONTEXTS:
        mse, nll = scores["query_mse"][str(k)], scores["query_nll"][str(k)]
        print(f"  K={k:2d}: query MSE {mse[0]:.4f} +- {mse[1]:.4f}   NLL {nll[0]:.3f} +- {nll[1]:.3f} nats")
    save_model(args.out / ANP_FILE.name, model, {
        "training": {
            "method": "anp", "attention": True, "width": model.empty.numel(), "heads": 8, "shots": SHOTS,
            "queries": SHOTS, "context": [0, SHOTS], "targets": "all 20 points of a task, the context among them",
            "tasks_per_step": 25, "steps": args.np_steps, "outer_lr": ANP_LR, "lr_schedule": "cosine", "seed": args.seed, "test_tasks": args.episodes,
            "test_seed": TEST_SEED, "threads": 1, "seconds": round(seconds),
        },
        "measured": scores,
    }, dtype=torch.float16)  # fmt: skip
    return [ANP_FILE.name]


def build_protonet(args: argparse.Namespace, work: Path) -> list[str]:
    """ProtoNet on Omniglot (both cores)."""
    torch.set_num_threads(2)
    start = time.perf_counter()
    config = TrainConfig.of(
        algorithm="protonet", dataset="omniglot", ways=60, shots=5, queries=5, steps=args.protonet_steps,
        bf16=True, val_every=0, log_every=100, seed=args.seed,
    )  # fmt: skip
    trainer = Trainer(config, work / "protonet", progress=False)
    conv4 = trainer.run().to(memory_format=torch.contiguous_format)
    protonet_seconds = time.perf_counter() - start
    test = omniglot("test")
    results = {
        k: evaluate(ProtoNet(), conv4, test, 5, k, 15, args.episodes, seed=0, progress=False) for k in (1, 5)
    }
    print(f"ProtoNet conv4: {args.protonet_steps} episodes of 60-way 5-shot in {protonet_seconds:.0f} s (bf16); "
          "test classes (held-out alphabets):")  # fmt: skip
    for r in results.values():
        print(f"  {r}")
    save_model(args.out / OMNIGLOT_FILE.name, conv4, {
        "training": {k: v for k, v in dataclasses.asdict(config).items() if k in (
            "ways", "shots", "queries", "steps", "outer_lr", "lr_schedule", "lr_decay_every", "bf16", "seed")}
        | {"method": "protonet", "dataset": "omniglot (embedded, Vinyals split)",
           "seconds": round(protonet_seconds)},
        "measured": {f"5w{k}s": {"mean": round(r.mean, 4), "ci95": round(r.ci95, 4), "episodes": r.episodes}
                     for k, r in results.items()},
    })  # fmt: skip
    return [OMNIGLOT_FILE.name]


def build_incontext(args: argparse.Namespace, work: Path) -> list[str]:
    """The transformer that fits 1-D lines in context (one thread: at width 64 it is no faster on two)."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    config = TrainConfig.of(
        algorithm="transformer", dataset="linear", dim=1, shots=MAX_EXAMPLES, queries=1, noise=NOISE, width=64,
        depth=3, heads=2, max_points=MAX_EXAMPLES + 1, tasks_per_step=64, outer_lr=args.incontext_lr,
        lr_schedule="constant", steps=args.incontext_steps, val_every=0, log_every=500, seed=args.seed,
    )  # fmt: skip
    trainer = Trainer(config, work / "incontext", progress=False)
    transformer = trainer.run().eval()
    seconds = time.perf_counter() - start
    transformer.half().float()  # shipped as float16 (half the file): measure the weights that ship
    errors = incontext_errors(transformer, args.prompts)
    methods = errors["methods"]
    print(f"in-context transformer: {args.incontext_steps} steps of 64 prompts of {MAX_EXAMPLES} points (lines, "
          f"noise {NOISE}) in {seconds:.0f} s; query squared error on {args.prompts} held-out prompts "
          "against k examples (mean, 95% CI):")  # fmt: skip
    print("    k " + "".join(f"{name.split(' (')[0].split(',')[0][:15]:>17}" for name in methods))
    for k in (0, 1, 2, 3, 5, 10, 20):
        print(f"  {k:3d} " + "".join(f"{m['mean'][k]:9.3f} +-{m['ci95'][k]:6.3f}" for m in methods.values()))
    flat = config.flat()
    save_model(args.out / INCONTEXT_FILE.name, transformer, {
        "training": {k: flat[k] for k in (
            "dim", "shots", "queries", "noise", "width", "depth", "heads", "max_points", "tasks_per_step",
            "steps", "outer_lr", "lr_schedule", "seed")}
        | {"method": "transformer", "dataset": "linear", "inputs": "x ~ N(0, 1), w ~ N(0, 1)",
           "threads": 1, "seconds": round(seconds)},
        "measured": {"query_mse_against_k": errors},
    }, dtype=torch.float16)  # fmt: skip
    return [INCONTEXT_FILE.name]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=WEB_DATA)
    parser.add_argument(
        "--only", nargs="+", choices=BUILDS, default=list(BUILDS), help="build only these (default: all)"
    )
    parser.add_argument(
        "--sinusoid-steps", type=int, default=20000, help="meta-steps of 25 tasks (both MLPs)"
    )
    parser.add_argument("--protonet-steps", type=int, default=2000, help="60-way 5-shot episodes")
    parser.add_argument("--incontext-steps", type=int, default=INCONTEXT_STEPS, help="steps of 64 prompts")
    parser.add_argument("--incontext-lr", type=float, default=INCONTEXT_LR, help="Adam's rate (constant)")
    parser.add_argument(
        "--np-steps", type=int, default=ANP_STEPS, help="steps of 25 tasks (the neural process)"
    )
    parser.add_argument("--episodes", type=int, default=600, help="test episodes / tasks for the numbers")
    parser.add_argument("--prompts", type=int, default=1000, help="test prompts per k (in-context errors)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps, into /tmp/fewshot-web")
    args = parser.parse_args()
    if args.quick:
        args.out, args.sinusoid_steps, args.protonet_steps, args.incontext_steps, args.episodes, args.prompts = (
            Path("/tmp/fewshot-web"), 50, 20, 20, 50, 50,
        )  # fmt: skip
        args.np_steps = 50
    work = Path(tempfile.mkdtemp(prefix="fewshot-web-build-"))
    builders = {
        "sinusoid": build_sinusoid, "protonet": build_protonet, "incontext": build_incontext, "np": build_anp,
    }  # fmt: skip
    written = [name for build in BUILDS if build in args.only for name in builders[build](args, work)]
    print(f"wrote {args.out}/{{{', '.join(written)}}}")


if __name__ == "__main__":
    main()
