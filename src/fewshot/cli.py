"""The ``fewshot`` command.

    fewshot train --run-dir runs/protonet [--max-minutes 10] [--shots 1] ...   meta-train, then test
    fewshot eval runs/protonet [--ways 5] [--shots 1 5] [--episodes 600]     evaluate a run on test classes

Every setting of :class:`fewshot.config.TrainConfig` and of every registered algorithm is a flag
(``--outer-lr 0.001``, ``--bf16``, ``--inner-lr 0.4``), type checked; a flag the chosen algorithm does not use is
refused. Bad input ends with one line saying what to change and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any, NoReturn


class UsageError(ValueError):
    """A problem with what the user asked for; reported in one line with exit code 2."""


# the run's settings, grouped for --help (every TrainConfig field but the recorded facts and `settings`)
GROUPS = {
    "algorithm and data": ("algorithm", "dataset", "data_root", "download", "split_scheme", "within", "rotations", "train_split",
                           "val_split", "test_split", "image_size", "augment", "channels", "invert", "label_column",
                           "text_column", "encoder", "split_lists", "finetune_layers", "max_tokens", "allow_nonfinite",
                           "val_fraction", "test_fraction", "split_seed", "hidden", "backbone", "dropblock", "dim", "noise", "inputs",
                           "curriculum", "curriculum_every"),
    "episodes and the outer loop": ("ways", "shots", "queries", "tasks_per_step", "steps", "max_minutes",
                                    "outer_lr", "optimizer", "lr_schedule", "lr_decay_every", "lr_decay", "seed"),
    "validation and logging": ("val_every", "val_episodes", "val_ways", "val_shots", "test_queries", "log_every",
                               "tensorboard"),
    "speed and devices": ("device", "route", "bf16", "channels_last", "threads", "compile"),
}  # fmt: skip


def _add_flag(group: argparse._ArgumentGroup, field: dataclasses.Field, hint: Any, default: str) -> None:
    from fewshot.config import plain_type

    kind, _ = plain_type(hint)
    choices = field.metadata.get("choices")
    own = field.metadata.get("help", "")
    # a help text that states its defaults itself (e.g. one per dataset) is not followed by "(default none)"
    text = (own if "(default" in own else f"{own} (default {default})").replace("%", "%%")
    flag = "--" + field.name.replace("_", "-")
    if kind is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        return
    metavar = "{" + ",".join(map(str, choices)) + "}" if choices else kind.__name__.upper()
    group.add_argument(flag, type=kind, default=None, metavar=metavar, help=text, choices=choices)


def _default(value: Any) -> str:
    return "none" if value is None else str(value)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Every setting as a flag: the run's, grouped, then each algorithm's own, grouped by the algorithms that
    share it (``--inner-lr``: maml, fomaml, ...)."""
    from fewshot.config import TrainConfig, general_fields
    from fewshot.registry import algorithms

    fields = general_fields()
    hints = typing.get_type_hints(TrainConfig)
    grouped = {n for names in GROUPS.values() for n in names} | {"in_features", "classes", "settings"}
    for title, names in [*GROUPS.items(), ("other settings", [n for n in fields if n not in grouped])]:
        group = parser.add_argument_group(title)
        for name in names:
            _add_flag(group, fields[name], hints[name], _default(fields[name].default))
    users: dict[str, list[str]] = {}  # setting -> algorithms that take it
    owner: dict[str, tuple[dataclasses.Field, Any]] = {}
    defaults: dict[str, dict[str, Any]] = {}
    for spec in algorithms().values():
        spec_hints = typing.get_type_hints(spec.settings)
        for f in dataclasses.fields(spec.settings):
            users.setdefault(f.name, []).append(spec.name)
            owner.setdefault(f.name, (f, spec_hints[f.name]))
            defaults.setdefault(f.name, {})[spec.name] = f.default
    by_users: dict[tuple[str, ...], list[str]] = {}
    for name, algos in users.items():
        by_users.setdefault(tuple(algos), []).append(name)
    for algos, names in by_users.items():
        group = parser.add_argument_group(f"settings of {', '.join(algos)}")
        for name in names:
            values = {a: _default(v) for a, v in defaults[name].items()}
            common = max(set(values.values()), key=list(values.values()).count)
            others = [f"{a}: {v}" for a, v in values.items() if v != common]
            default = common + (f"; {', '.join(others)}" if others else "")
            _add_flag(group, owner[name][0], owner[name][1], default)


def _config_from(args: argparse.Namespace) -> Any:
    """Defaults < ``--preset`` < ``--config`` file < flags (see :mod:`fewshot.presets`)."""
    from fewshot.config import TrainConfig
    from fewshot.presets import known_settings, resolve

    flags = {name: getattr(args, name) for name in known_settings() if getattr(args, name, None) is not None}
    settings, origins = resolve(args.preset, args.config, flags)
    return TrainConfig.of(origins=origins, **settings)


def cmd_predict(args: argparse.Namespace) -> int:
    from fewshot.predict import predict

    result = predict(_existing_run(args.run), args.support, args.query, args.checkpoint,
                     allow_nonfinite=args.allow_nonfinite, device=_device(args))  # fmt: skip
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        for note in result.notes:
            print(f"note: {note}")
        print(result.table())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fewshot.report import report

    run_dir = _existing_run(args.run)
    files = report(
        run_dir, args.out, tuple(args.shots), args.episodes, args.seed, not args.quiet, _device(args)
    )
    print("fewshot: wrote " + ", ".join(str(f) for f in files))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from fewshot.presets import PRESETS
    from fewshot.registry import algorithms

    print("presets (fewshot train --preset NAME; any flag overrides a preset's value):")
    for name, p in PRESETS.items():
        print(f"  {name:26s} {p.summary}\n  {'':26s} source: {p.source}")
    print("algorithms (fewshot train --algorithm NAME):")
    for name, spec in algorithms().items():
        print(f"  {name:12s} {spec.summary}")
    return 0


def _print_results(results: list[Any]) -> None:
    for r in results:
        print(f"  {r}")


def cmd_train(args: argparse.Namespace) -> int:
    from fewshot import distributed
    from fewshot.evaluate import evaluate_run
    from fewshot.presets import known_settings
    from fewshot.runs import RunDir
    from fewshot.train import Trainer

    if args.resume is not None:
        given = [name for name in known_settings() if getattr(args, name, None) is not None]
        given += [flag for flag, on in (("run_dir", args.run_dir), ("overwrite", args.overwrite)) if on]
        if given or args.preset or args.config:
            raise UsageError(
                "--resume continues a run with its own settings, in its own directory; drop "
                + (", ".join("--" + g.replace("_", "-") for g in given) or "--preset / --config")
            )
        run_dir = Path(args.resume)
        trainer = Trainer.resumed(run_dir, progress=not args.quiet)
        config = trainer.config
        if trainer.world.main:
            print(f"fewshot: resuming {config.algorithm} in {run_dir}", flush=True)
    else:
        config = _config_from(args)
        if args.test_ways is not None and args.test_ways < 2:
            raise UsageError(
                f"--test-ways must be at least 2 (a 1-way episode is always right), got {args.test_ways}"
            )
        if args.test_ways is not None and config.spec.reads_ways and args.test_ways > config.ways:
            raise UsageError(
                f"--test-ways {args.test_ways}: this {config.algorithm} network reads at most --ways {config.ways} "
                "classes; test with fewer ways or train with more"
            )
        if args.test_episodes < 0:
            raise UsageError(f"--test-episodes must be 0 (no test) or more, got {args.test_episodes}")
        if args.run_dir is None and distributed.launched():
            raise UsageError("under torchrun give --run-dir: every process must name the same directory")
        run_dir = Path(args.run_dir) if args.run_dir is not None else new_run_dir(config)
        episodes = {
            "regression": f" ({config.shots}-shot tasks)",
            "bandit": f" ({config.arms}-armed bandits, horizon {config.horizon})",
        }.get(config.data, f" ({config.ways}-way {config.shots}-shot episodes)")
        what = {"episodes": episodes, "batches": " (batches of all training classes)",
                "none": " (nothing to train)"}[config.spec.training]  # fmt: skip
        try:
            trainer = Trainer(config, run_dir, progress=not args.quiet, overwrite=args.overwrite)
        except BaseException:
            if args.run_dir is None:  # the new directory was never used: leave nothing behind
                _remove_empty(run_dir)
            raise
        if trainer.world.main:
            print(
                f"fewshot: training {config.algorithm} on {config.dataset}{what} into {run_dir}", flush=True
            )
    try:
        trainer.run()
    finally:
        distributed.stop()
    if not trainer.world.main:  # rank 0 alone reports and tests
        return 0
    if args.resume is None and args.run_dir is None:
        point_latest_at(run_dir)
    last = RunDir(run_dir).metrics()[-1]
    print(
        f"fewshot: trained {last['step']} steps ({last['episodes']} episodes) in {last['train_seconds']:.0f} s "
        f"({last['seconds']:.0f} s with validation)",
        flush=True,
    )
    if args.test_episodes > 0:
        print(
            f"fewshot: testing on held-out {({'regression': 'tasks', 'bandit': 'bandits'}).get(config.data, 'classes')} "
            f"({config.test_split} split, {args.test_episodes} episodes)"
        )
        results = evaluate_run(run_dir, args.test_ways, args.test_shots, args.test_episodes, args.test_seed,
                               progress=not args.quiet, device=trainer.device)  # fmt: skip
        _print_results(results)
    print(f"fewshot: run directory {run_dir}")
    return 0


def new_run_dir(config: Any) -> Path:
    """A new ``runs/<algorithm>-<date>-<time>`` (``-2``, ``-3``, ... if taken), created here, so that two plain
    ``fewshot train`` commands started in the same second never share one."""
    import time

    stem = Path("runs") / f"{config.algorithm}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = stem, 2
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            path, n = stem.with_name(f"{stem.name}-{n}"), n + 1


def _remove_empty(run_dir: Path) -> None:
    """Removes a default run directory (and ``runs/``) left empty by a command that failed."""
    for folder in (run_dir, run_dir.parent):
        try:
            folder.rmdir()  # only if empty
        except OSError:
            return


def point_latest_at(run_dir: Path) -> None:
    """Makes ``runs/latest`` a link to the newest default run directory (replaced atomically; where links are not
    possible, e.g. some Windows set-ups, there is simply no link)."""
    link = run_dir.parent / "latest"
    if link.exists() and not link.is_symlink():
        return  # a folder the user made (or a run of an older version): never replaced
    tmp = run_dir.parent / f".latest.{os.getpid()}.tmp"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)


def _device(args: argparse.Namespace) -> Any:
    from fewshot.devices import resolve

    return resolve(args.device)


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="auto (CUDA if present, else MPS, else the CPU), cpu, cuda, cuda:N or mps (default auto)",
    )


def _existing_run(text: str) -> Path:
    run_dir = Path(text)
    if not run_dir.is_dir():
        raise UsageError(
            f"run directory {run_dir} does not exist; give the --run-dir used with `fewshot train`"
        )
    return run_dir


def cmd_eval(args: argparse.Namespace) -> int:
    from fewshot.evaluate import evaluate_run

    attack = None
    if args.attack is not None:
        from fewshot.attacks import Attack

        epsilon = 0.1 if args.epsilon is None else args.epsilon
        steps = 10 if args.attack_steps is None else args.attack_steps
        attack = Attack(args.attack, epsilon, steps, args.attack_step_size, support=args.attack_support)
    elif args.attack_support or (args.epsilon, args.attack_steps, args.attack_step_size) != (
        None,
        None,
        None,
    ):
        raise UsageError(
            "--epsilon, --attack-steps, --attack-step-size and --attack-support go with --attack fgsm or --attack pgd"
        )
    results = evaluate_run(_existing_run(args.run), args.ways, args.shots, args.episodes, args.seed, args.split,
                           args.checkpoint, args.queries, not args.quiet, _device(args), args.baselines,
                           attack)  # fmt: skip
    _print_results(results)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fewshot.compare import _pyplot, compare, curves, markdown, prepare, write_curves, write_table

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the comparison's files")
    from fewshot.compare_regression import is_regression
    from fewshot.rl.compare import is_bandit
    from fewshot.rl.strategies import STRATEGIES

    if is_bandit(args.methods):
        return _compare_bandits(args, out)
    if any(m.rpartition("=")[2].partition(":")[0] in STRATEGIES for m in args.methods):
        raise UsageError(
            "bandit strategies play a bandit run's test bandits: give a bandit run directory too"
        )
    if is_regression(args.methods):
        return _compare_regression(args, out)
    if min(args.shots) < 1:
        raise UsageError("--shots must be at least 1 for classifiers (0 examples: regression runs only)")
    if args.ways < 2:
        raise UsageError(f"--ways must be at least 2 (a 1-way episode is always right), got {args.ways}")
    if not args.no_plots:
        _pyplot()  # fail before the long evaluation, not after it
    methods, data = prepare(
        args.methods, args.ways, args.split, args.data_root, args.finetune_steps, _device(args)
    )
    within = args.within
    if within is None:  # as the runs were trained (prepare has checked that they agree)
        within = next((m.config.within for m in methods if m.config is not None), "")
    for k in args.shots:
        table = compare(
            methods, data, args.ways, k, args.queries, args.episodes, args.seed, not args.quiet, within
        )
        files = write_table(out, table, not args.no_plots)
        print(markdown(table))
        print("fewshot: wrote " + ", ".join(str(f) for f in files))
    if args.curves:
        data_curves = curves(methods, data, args.ways, queries=args.queries, episodes=args.curve_episodes,
                             seed=args.seed, progress=not args.quiet)  # fmt: skip
        files = write_curves(out, data_curves, not args.no_plots)
        print("fewshot: wrote " + ", ".join(str(f) for f in files))
    return 0


def _compare_regression(args: argparse.Namespace, out: Path) -> int:
    """``fewshot compare`` for regression runs: the same tasks for every run and baseline, per --shots."""
    from fewshot.compare import _pyplot
    from fewshot.compare_regression import (
        compare_regression,
        markdown_regression,
        prepare_regression,
        write_regression,
    )

    if not args.no_plots and len(args.shots) > 1:
        _pyplot()  # fail before the evaluation, not after it
    if args.split is not None or args.data_root is not None:
        raise UsageError(
            "regression runs are compared on the first run's own test tasks; drop --split / --data-root"
        )
    methods, family = prepare_regression(args.methods, _device(args))
    tables = []
    for k in args.shots:
        tables.append(compare_regression(methods, args.methods, family, k, args.episodes, not args.quiet))
        print(markdown_regression(tables[-1]))
    files = write_regression(out, tables, not args.no_plots)
    print("fewshot: wrote " + ", ".join(str(f) for f in files))
    return 0


def _compare_bandits(args: argparse.Namespace, out: Path) -> int:
    """``fewshot compare`` for bandit runs: the same bandits for every run and strategy."""
    from fewshot.compare import _pyplot
    from fewshot.rl.compare import compare_bandits, markdown_bandits, prepare_bandits, write_bandits

    if not args.no_plots:
        _pyplot()  # fail before the evaluation, not after it
    if args.split is not None or args.data_root is not None:
        raise UsageError(
            "bandit runs are compared on the first run's own test bandits; drop --split / --data-root"
        )
    players, family = prepare_bandits(args.methods, _device(args))
    family = dataclasses.replace(family, seed=family.seed + args.seed)  # seed 0: the run's own test bandits
    table = compare_bandits(players, family, args.episodes, not args.quiet)
    print(markdown_bandits(table))
    files = write_bandits(out, table, not args.no_plots)
    print("fewshot: wrote " + ", ".join(str(f) for f in files))
    return 0


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise UsageError(
            f"fewshot serve needs the web extra ({e.name} is missing): pip install 'fewshot[web]'"
        ) from e
    import socket

    from fewshot.web.app import create_app
    from fewshot.web.server import check_host

    check_host(args.host)

    app = create_app(
        device=_device(args)
    )  # loads the shipped models first: a broken install fails before the address is printed
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        sock.close()
        raise UsageError(
            f"cannot listen on {args.host} port {args.port} ({e.strerror}); choose another --port"
        ) from e
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"fewshot: explorers at http://{host}:{sock.getsockname()[1]}/  (Ctrl+C stops)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"fewshot: note: {args.host} may be reachable from other machines", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level=args.log_level)).run(sockets=[sock])
    return 0


def _port(text: str) -> int:
    value = int(text) if text.isdigit() else -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fewshot", description="Meta-learning on real data.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="meta-train a model, then test it on held-out classes")
    train.add_argument(
        "--run-dir",
        default=None,
        metavar="DIR",
        help="where the run is written; refused if it holds a run already (default: a new runs/ALGORITHM-DATE-TIME, "
        "and runs/latest links to it)",
    )
    train.add_argument("--overwrite", action="store_true", help="replace the run that --run-dir holds")
    train.add_argument(
        "--test-ways",
        type=_positive,
        default=None,
        metavar="INT",
        help="classes per test episode after training (default 5; a fixed-head classifier: its ways)",
    )
    train.add_argument(
        "--test-shots",
        type=_positive,
        nargs="+",
        default=None,
        metavar="INT",
        help="support examples per class of the test after training, one test each (default 1 5; classifiers)",
    )
    train.add_argument(
        "--test-episodes",
        type=int,
        default=600,
        metavar="INT",
        help="episodes of the test after training (default 600; 0 skips it)",
    )
    train.add_argument(
        "--test-seed",
        type=int,
        default=0,
        metavar="INT",
        help="seed of the test episodes (default 0: the same episodes as `fewshot eval`)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument(
        "--resume",
        default=None,
        metavar="RUN",
        help="continue a stopped or killed run from its last logged step",
    )
    train.add_argument("--preset", default=None, help="a named setting from the literature (fewshot list)")
    train.add_argument("--config", default=None, help="a JSON or TOML file of settings (flags override it)")
    _add_config_flags(train)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a trained run on test episodes (mean and 95%% CI)")
    ev.add_argument("run", help="run directory written by `fewshot train`")
    ev.add_argument("--ways", type=_positive, default=None, help="default 5 (a classifier head: its ways)")
    ev.add_argument(
        "--shots",
        type=_positive,
        nargs="+",
        default=None,
        metavar="INT",
        help="support examples per class; one test per value (default 1 5; classifiers)",
    )
    ev.add_argument(
        "--queries", type=_positive, default=None, help="per class (default: the run's test_queries)"
    )
    ev.add_argument(
        "--episodes",
        type=_positive,
        default=600,
        metavar="INT",
        help="test episodes per setting (default 600: the field's usual minimum for a stable CI)",
    )
    ev.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="INT",
        help="episode seed: the same seed, the same episodes for every run (default 0)",
    )
    ev.add_argument("--split", default=None, help="class split to test on (default: the run's test split)")
    ev.add_argument("--baselines", action="store_true", help="regression runs: also score least squares, ridge, "
                    "3-nearest neighbours, averaging and gradient descent (best learning rate) on the same tasks; "
                    "bandit runs: random, greedy, eps-greedy, UCB1, Thompson and Gittins on the same bandits")  # fmt: skip
    ev.add_argument(
        "--checkpoint",
        choices=["best", "last"],
        default="best",
        help="best validation (else last, for runs without validation) or last (default best)",
    )
    ev.add_argument("--attack", choices=["fgsm", "pgd"], default=None,
                    help="also score queries perturbed against the adapted learner (white box): clean and attacked "
                         "accuracy on the same episodes")  # fmt: skip
    ev.add_argument("--epsilon", type=float, default=None, metavar="E",
                    help="the attack's L-infinity radius (default 0.1), in pixels of [0, 1] for images, in feature "
                         "units for tables")  # fmt: skip
    ev.add_argument(
        "--attack-steps", type=_positive, default=None, metavar="INT", help="PGD steps (default 10)"
    )
    ev.add_argument("--attack-step-size", type=float, default=None, metavar="S",
                    help="PGD step size (default 2.5 * epsilon / steps)")  # fmt: skip
    ev.add_argument("--attack-support", action="store_true",
                    help="also perturb the support set (against the learner adapted to it) before adapting")  # fmt: skip
    ev.add_argument("--quiet", action="store_true", help="no progress")
    _add_device(ev)
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser(
        "predict",
        help="adapt a trained run to your labelled examples and label your queries",
        description="Image runs: --support is a folder with one subfolder of images per class; --query takes image "
        "files or folders. Table runs: --support is a csv/npz with the label column, --query a table. Text runs: "
        "--support is a csv/tsv/jsonl of labelled utterances (or a seq.in/label folder), --query utterances (csv, "
        "tsv, jsonl, or a .txt with one per line); intents never seen in training work too. Prints each "
        "query's label and class probabilities (for nearest-neighbour and Siamese runs: a softmax of similarities).",
    )
    pr.add_argument("run", help="run directory written by `fewshot train`")
    pr.add_argument(
        "--support",
        required=True,
        help="labelled examples: a folder of class folders, a table, or labelled utterances",
    )
    pr.add_argument(
        "--query",
        required=True,
        nargs="+",
        help="images or folders of images, one table, or files of utterances",
    )
    pr.add_argument(
        "--checkpoint",
        choices=["best", "last"],
        default="best",
        help="best validation (else last) or last (default best)",
    )
    pr.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pr.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="accept NaN or infinite values in support and query tables (refused by default)",
    )
    _add_device(pr)
    pr.set_defaults(func=cmd_predict)

    rep = sub.add_parser("report", help="plots of a run: training curves, test accuracy against shots")
    rep.add_argument("run", help="run directory written by `fewshot train`")
    rep.add_argument("--out", default=None, help="output folder (default RUN/report)")
    rep.add_argument(
        "--shots",
        type=_positive,
        nargs="+",
        default=[1, 2, 5, 10],
        metavar="INT",
        help="points of the accuracy-against-shots curve (default 1 2 5 10)",
    )
    rep.add_argument("--episodes", type=_positive, default=100, help="test episodes per point (default 100)")
    rep.add_argument("--seed", type=int, default=0, metavar="INT", help="episode seed (default 0)")
    rep.add_argument("--quiet", action="store_true", help="no progress")
    _add_device(rep)
    rep.set_defaults(func=cmd_report)

    lst = sub.add_parser(
        "list", help="the presets from the literature, with their sources, and the algorithms"
    )
    lst.set_defaults(func=cmd_list)

    cmp = sub.add_parser(
        "compare",
        help="evaluate several methods on identical test episodes: table, paired differences, curves",
        description="METHOD: a run directory, [label=]RUN, RUN:nn|nn-cosine|class-mean|finetune|finetune-cosine|"
        "finetune-all (another test-time algorithm on the run's network), or a built-in: pixel-nn (= input-nn), "
        "input-mean, linear-probe (on the raw inputs: pixels, features, sentence embeddings), scratch. "
        "Regression runs (sinusoids, linear functions) are compared on the first run's test tasks, beside the "
        "built-ins least-squares, ridge, 3-nn, averaging, gd (one step, best learning rate) or baselines (all). "
        "Bandit runs (rl2, maml-rl) play the first run's test bandits beside the strategies random, greedy, "
        "eps-greedy[:EPSILON], ucb1[:C], thompson, gittins or baselines (all).",
    )
    cmp.add_argument("methods", nargs="+", metavar="METHOD", help="methods to compare (see above)")
    cmp.add_argument(
        "--ways", type=_positive, default=5, metavar="INT", help="classes per episode (default 5)"
    )
    cmp.add_argument(
        "--shots",
        type=_count,
        nargs="+",
        default=[1, 5],
        metavar="INT",
        help="support examples per class (regression: per task, 0 allowed); one table per value (default 1 5)",
    )
    cmp.add_argument("--queries", type=_positive, default=15, help="per class (default 15)")
    cmp.add_argument(
        "--episodes",
        type=_positive,
        default=600,
        metavar="INT",
        help="identical test episodes for every method (default 600)",
    )
    cmp.add_argument("--seed", type=int, default=0, metavar="INT", help="episode seed (default 0)")
    cmp.add_argument("--split", default=None, help="class split (default: the first run's test split)")
    cmp.add_argument("--data-root", default=None, help="dataset location (default: the first run's)")
    cmp.add_argument("--finetune-steps", type=_positive, default=100, help="steps of the scratch built-in")
    cmp.add_argument("--curves", action="store_true", help="also accuracy against shots and against steps")
    cmp.add_argument("--within", choices=["", "alphabet"], default=None,
                     help="alphabet: each episode's classes from one alphabet (Lake et al.'s protocol); default: as "
                     "the first run was trained")  # fmt: skip
    cmp.add_argument("--curve-episodes", type=_positive, default=100, help="episodes per curve point")
    cmp.add_argument("--out", default="compare", help="output directory (default ./compare)")
    cmp.add_argument("--no-plots", action="store_true", help="Markdown and JSON only (no matplotlib)")
    cmp.add_argument("--quiet", action="store_true", help="no progress")
    _add_device(cmp)
    cmp.set_defaults(func=cmd_compare)

    srv = sub.add_parser(
        "serve",
        help="open the browser explorers (ProtoNet on 2-D points, MAML on sinusoids, one-shot Omniglot, in-context "
        "learning of a line)",
        description="Starts a local web app backed by fewshot's models; needs pip install 'fewshot[web]'.",
    )
    srv.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)"
    )
    srv.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    srv.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    _add_device(srv)
    srv.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns its exit code: 0 done, 2 bad input (one line saying what to change), 3 a run that
    went wrong (training diverged), 130 interrupted."""
    import warnings

    from fewshot.evaluate import RunFileWarning

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already reported in one line)
        return e.code if isinstance(e.code, int) else 2
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RunFileWarning)
            code = args.func(args)
        for w in caught:
            if issubclass(w.category, RunFileWarning):
                print(f"fewshot: note: {w.message}", file=sys.stderr)
        return code
    except BrokenPipeError:  # output piped into `head`, which stopped reading (before OSError: it is one)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (so the interpreter's final flush stays quiet)
        return 0
    except (FloatingPointError, RuntimeError) as e:
        from fewshot.distributed import ProcessLost
        from fewshot.train import TrainingDiverged

        if args.debug or not isinstance(e, (FloatingPointError, TrainingDiverged, ProcessLost)):
            raise
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks for the run
            print(f"fewshot: error: {e}", file=sys.stderr)
        return 3
    except (ValueError, OSError) as e:  # OSError: missing files, permissions, full disks
        if args.debug:
            raise
        print(f"fewshot: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fewshot: interrupted", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    """The error as one line: an OSError names its file and reason without the ``[Errno N]`` prefix."""
    if isinstance(e, OSError) and e.strerror and not isinstance(e, ValueError):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror[0].lower()}{e.strerror[1:]}"
    return " ".join(str(e).split())


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line and a pointer to ``--help`` instead of the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"fewshot: error: {message} (see `{self.prog} --help`)\n")


if __name__ == "__main__":
    sys.exit(main())
