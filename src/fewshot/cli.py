"""The ``fewshot`` command.

    fewshot train --run-dir runs/protonet [--max-minutes 10] [--shots 1] ...   meta-train, then test
    fewshot eval runs/protonet [--ways 5] [--shots 1 5] [--episodes 600]     evaluate a run on test classes

Every training setting of :class:`fewshot.train.TrainConfig` is a flag (``--outer-lr 0.001``, ``--bf16``), type
checked. Bad input ends with one line saying what to change and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

from fewshot import io


class UsageError(ValueError):
    """A problem with what the user asked for; reported in one line with exit code 2."""


def _field_type(field: dataclasses.Field) -> type:
    """The plain type behind a config field's annotation (``int | None`` -> int)."""
    hints = typing.get_type_hints(_config_class())
    hint = hints[field.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _config_class() -> type:
    from fewshot.train import TrainConfig

    return TrainConfig


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training settings (defaults: ProtoNet, Omniglot, Snell et al. 2017)")
    for field in dataclasses.fields(_config_class()):
        flag = "--" + field.name.replace("_", "-")
        kind = _field_type(field)
        if kind is bool:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=f"(default {field.default})"
            )
        else:
            group.add_argument(
                flag,
                type=kind,
                default=None,
                metavar=kind.__name__.upper(),
                help=f"(default {field.default})",
            )


def _config_from(args: argparse.Namespace) -> Any:
    """Defaults < ``--preset`` < ``--config`` file < flags (see :mod:`fewshot.presets`)."""
    from fewshot.presets import resolve

    flags = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(_config_class())
        if getattr(args, f.name, None) is not None
    }
    return _config_class()(**resolve(getattr(args, "preset", None), getattr(args, "config", None), flags))


def cmd_predict(args: argparse.Namespace) -> int:
    from fewshot.predict import predict

    run_dir = _existing_run(args.run)
    checkpoint = {"best": "best.safetensors", "last": "model.safetensors"}[args.checkpoint]
    result = predict(run_dir, args.support, args.query, checkpoint)
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
    files = report(run_dir, args.out, tuple(args.shots), args.episodes, args.seed, not args.quiet)
    print("fewshot: wrote " + ", ".join(str(f) for f in files))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from fewshot.presets import PRESETS
    from fewshot.registry import ALGORITHMS

    print("presets (fewshot train --preset NAME; any flag overrides a preset's value):")
    for name, p in PRESETS.items():
        print(f"  {name:26s} {p.summary}\n  {'':26s} source: {p.source}")
    print("algorithms (--algorithm): " + ", ".join(ALGORITHMS))
    return 0


def _print_results(results: list[Any]) -> None:
    for r in results:
        print(f"  {r}")


def _evaluate_run(run_dir: Path, ways: int | None, shots: list[int], episodes: int, seed: int, split: str | None,
                  checkpoint: str, queries: int | None, progress: bool) -> list[Any]:  # fmt: skip
    from fewshot.algorithms.base import parameters_of
    from fewshot.evaluate import evaluate, evaluate_regression
    from fewshot.registry import HEADLESS, build_algorithm
    from fewshot.train import load_model, load_split

    if not (run_dir / checkpoint).is_file() and checkpoint == "best.safetensors":
        checkpoint = "model.safetensors"  # runs trained without validation have no "best"
    model, config, extra = load_model(run_dir, checkpoint)
    params = parameters_of(model) | extra
    algorithm = build_algorithm(config, testing=True)
    split = split or config.test_split
    results = []
    if config.dataset == "sinusoid":
        family = load_split(config, split)
        for k in shots:
            family = dataclasses.replace(family, shots=k, queries=queries or family.queries)
            results.append(evaluate_regression(algorithm, model, family, episodes, params, progress))
    else:
        if config.algorithm not in HEADLESS:  # a classifier head answers for exactly `config.ways` classes
            if ways not in (None, config.ways):
                raise UsageError(
                    f"this {config.algorithm} model has a {config.ways}-way head; test with --ways {config.ways}"
                )
            ways = config.ways
        data = load_split(config, split)
        for k in shots:
            results.append(
                evaluate(
                    algorithm,
                    model,
                    data,
                    ways or 5,
                    k,
                    queries or config.test_queries,
                    episodes,
                    seed,
                    params=params,
                    progress=progress,
                )  # fmt: skip
            )
    record = {"checkpoint": checkpoint, "split": split, "results": [r.to_dict() for r in results]}
    existing = json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").is_file() else []
    io.write_json(run_dir / "eval.json", [*existing, record])
    return results


def cmd_train(args: argparse.Namespace) -> int:
    from fewshot.train import Trainer

    if args.resume is not None:
        given = [
            f.name for f in dataclasses.fields(_config_class()) if getattr(args, f.name, None) is not None
        ]
        if given or args.preset or args.config:
            raise UsageError(
                "--resume continues a run with its own settings; drop "
                + (", ".join("--" + g.replace("_", "-") for g in given) or "--preset / --config")
            )
        run_dir = Path(args.resume)
        trainer = Trainer.resumed(run_dir, progress=not args.quiet)
        config = trainer.config
        print(f"fewshot: resuming {config.algorithm} in {run_dir}", flush=True)
    else:
        config = _config_from(args)
        run_dir = Path(args.run_dir)
        print(f"fewshot: training {config.algorithm} on {config.dataset} ({config.ways}-way {config.shots}-shot "
              f"episodes) into {run_dir}", flush=True)  # fmt: skip
        trainer = Trainer(config, run_dir, progress=not args.quiet)
    trainer.run()
    last = io.read_jsonl(run_dir / "metrics.jsonl")[-1]
    print(
        f"fewshot: trained {last['step']} steps ({last['episodes']} episodes) in {last['train_seconds']:.0f} s "
        f"({last['seconds']:.0f} s with validation)",
        flush=True,
    )
    if args.test_episodes > 0:
        print(
            f"fewshot: testing on held-out classes ({config.test_split} split, {args.test_episodes} episodes)"
        )
        results = _evaluate_run(run_dir, args.test_ways, args.test_shots, args.test_episodes, args.test_seed,
                                None, "best.safetensors", None, not args.quiet)  # fmt: skip
        _print_results(results)
    print(f"fewshot: run directory {run_dir}")
    return 0


def _existing_run(text: str) -> Path:
    run_dir = Path(text)
    if not run_dir.is_dir():
        raise UsageError(
            f"run directory {run_dir} does not exist; give the --run-dir used with `fewshot train`"
        )
    return run_dir


def cmd_eval(args: argparse.Namespace) -> int:
    run_dir = _existing_run(args.run)
    checkpoint = {"best": "best.safetensors", "last": "model.safetensors"}[args.checkpoint]
    results = _evaluate_run(run_dir, args.ways, args.shots, args.episodes, args.seed, args.split, checkpoint,
                            args.queries, not args.quiet)  # fmt: skip
    _print_results(results)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fewshot.compare import (
        compare,
        curves,
        load_method,
        markdown,
        same_test_classes,
        write_curves,
        write_table,
    )
    from fewshot.train import TrainConfig, load_split

    out = Path(args.out)
    if not args.no_plots:
        from fewshot.compare import _pyplot

        _pyplot()  # fail before the long evaluation, not after it
    # the test classes: from the first run directory's config (or the defaults: embedded Omniglot)
    base = TrainConfig()
    for spec in args.methods:
        run = Path(spec.rpartition("=")[2].partition(":")[0])
        if (run / "config.json").is_file():
            try:
                base = TrainConfig(**json.loads((run / "config.json").read_text())["config"])
            except (ValueError, KeyError, TypeError) as e:
                raise UsageError(
                    f"{run / 'config.json'} is damaged or from another version ({e}); retrain it"
                ) from e
            break
    if base.dataset == "sinusoid":
        raise UsageError("compare scores classifiers on test episodes; sinusoid runs: use `fewshot eval`")
    if args.data_root is not None:
        base = dataclasses.replace(base, data_root=args.data_root)
    data = load_split(base, args.split or base.test_split)
    methods = [load_method(spec, args.ways, data.image_shape, args.finetune_steps) for spec in args.methods]
    runs = {m.label: m.config for m in methods if m.config is not None}
    if runs and args.data_root is None:
        same_test_classes({"the data": base, **runs})
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise UsageError(f"two methods share a label ({labels}); name them with label=RUN")
    for k in args.shots:
        table = compare(methods, data, args.ways, k, args.queries, args.episodes, args.seed, not args.quiet)
        files = write_table(out, table, not args.no_plots)
        print(markdown(table))
        print("fewshot: wrote " + ", ".join(str(f) for f in files))
    if args.curves:
        data_curves = curves(methods, data, args.ways, queries=args.queries, episodes=args.curve_episodes,
                             seed=args.seed, progress=not args.quiet)  # fmt: skip
        files = write_curves(out, data_curves, not args.no_plots)
        print("fewshot: wrote " + ", ".join(str(f) for f in files))
    return 0


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

    app = create_app()  # loads the shipped models first: a broken install fails before the address is printed
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
    parser = argparse.ArgumentParser(prog="fewshot", description="Meta-learning on real data.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="meta-train a model, then test it on held-out classes")
    train.add_argument(
        "--run-dir", default="runs/latest", help="where the run is written (default runs/latest)"
    )
    train.add_argument("--test-ways", type=_positive, default=None, help="default 5 (a classifier: its ways)")
    train.add_argument("--test-shots", type=_positive, nargs="+", default=[1, 5])
    train.add_argument("--test-episodes", type=int, default=600, help="0 skips the final test")
    train.add_argument("--test-seed", type=int, default=0)
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
    ev.add_argument("--shots", type=_positive, nargs="+", default=[1, 5])
    ev.add_argument(
        "--queries", type=_positive, default=None, help="per class (default: the run's test_queries)"
    )
    ev.add_argument("--episodes", type=_positive, default=600)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--split", default=None, help="class split to test on (default: the run's test split)")
    ev.add_argument("--checkpoint", choices=["best", "last"], default="best")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser(
        "predict",
        help="adapt a trained run to your labelled examples and label your queries",
        description="Image runs: --support is a folder with one subfolder of images per class; --query takes image "
        "files or folders. Table runs: --support is a csv/npz with the label column, --query a table. Prints each "
        "query's label and class probabilities (for nearest-neighbour and Siamese runs: a softmax of similarities).",
    )
    pr.add_argument("run", help="run directory written by `fewshot train`")
    pr.add_argument(
        "--support", required=True, help="labelled examples: a folder of class folders, or a table"
    )
    pr.add_argument("--query", required=True, nargs="+", help="images or folders of images, or one table")
    pr.add_argument("--checkpoint", choices=["best", "last"], default="best")
    pr.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pr.set_defaults(func=cmd_predict)

    rep = sub.add_parser("report", help="plots of a run: training curves, test accuracy against shots")
    rep.add_argument("run", help="run directory written by `fewshot train`")
    rep.add_argument("--out", default=None, help="output folder (default RUN/report)")
    rep.add_argument("--shots", type=_positive, nargs="+", default=[1, 2, 5, 10])
    rep.add_argument("--episodes", type=_positive, default=100, help="test episodes per point (default 100)")
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument("--quiet", action="store_true")
    rep.set_defaults(func=cmd_report)

    lst = sub.add_parser(
        "list", help="the presets from the literature, with their sources, and the algorithms"
    )
    lst.set_defaults(func=cmd_list)

    cmp = sub.add_parser(
        "compare",
        help="evaluate several methods on identical test episodes: table, paired differences, curves",
        description="METHOD: a run directory, [label=]RUN, RUN:nn|nn-cosine|finetune|finetune-cosine|"
        "finetune-all (another test-time algorithm on the run's network), or a built-in: pixel-nn, scratch.",
    )
    cmp.add_argument("methods", nargs="+", metavar="METHOD")
    cmp.add_argument("--ways", type=_positive, default=5)
    cmp.add_argument("--shots", type=_positive, nargs="+", default=[1, 5])
    cmp.add_argument("--queries", type=_positive, default=15, help="per class (default 15)")
    cmp.add_argument("--episodes", type=_positive, default=600)
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--split", default=None, help="class split (default: the first run's test split)")
    cmp.add_argument("--data-root", default=None, help="dataset location (default: the first run's)")
    cmp.add_argument("--finetune-steps", type=_positive, default=100, help="steps of the scratch built-in")
    cmp.add_argument("--curves", action="store_true", help="also accuracy against shots and against steps")
    cmp.add_argument("--curve-episodes", type=_positive, default=100, help="episodes per curve point")
    cmp.add_argument("--out", default="compare", help="output directory (default ./compare)")
    cmp.add_argument("--no-plots", action="store_true", help="Markdown and JSON only (no matplotlib)")
    cmp.add_argument("--quiet", action="store_true")
    cmp.set_defaults(func=cmd_compare)

    srv = sub.add_parser(
        "serve",
        help="open the browser explorers (ProtoNet on 2-D points, MAML on sinusoids, one-shot Omniglot)",
        description="Starts a local web app backed by fewshot's models; needs pip install 'fewshot[web]'.",
    )
    srv.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)"
    )
    srv.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    srv.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    srv.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FloatingPointError, OSError) as e:  # OSError: missing files, permissions, full disks
        if args.debug:
            raise
        print(f"fewshot: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fewshot: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` or similar, which stopped reading
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (so the interpreter's final flush stays quiet)
        return 0


if __name__ == "__main__":
    sys.exit(main())
