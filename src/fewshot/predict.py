"""Predictions for your own examples: adapt a trained run to a support set you give, label your queries.

    fewshot predict runs/protonet --support my_classes/ --query photo1.png more_photos/
    fewshot predict runs/table-maml --support labelled.csv --query unlabelled.csv --json

Image runs take a support folder with one subfolder per class and query image files or folders; table runs
take a support table with a label column and a query table (its label column, if any, is ignored); text runs take
labelled utterances (csv, tsv, jsonl or seq.in/label) and query utterances (the same, or a .txt, one per line),
embedded by the run's encoder. Images are
converted to what the model was trained on (grey or RGB, its size, Omniglot's bright-ink-on-black convention),
and every conversion is reported as a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewshot import devices
from fewshot.datasets.folder import (
    IMAGE_ERRORS,
    IMAGE_SUFFIXES,
    class_folders,
    image_files,
    load_image,
)
from fewshot.datasets.storage import DatasetError
from fewshot.datasets.table import is_number, numeric_rows, read_csv, read_table
from fewshot.models import running_stats_layers
from fewshot.tasks.episodes import Split


@dataclass
class Prediction:
    classes: list[str]
    queries: list[str]  # a name per query (file path, or table row)
    probabilities: np.ndarray  # (n_queries, n_classes)
    notes: list[str] = field(default_factory=list)

    def labels(self) -> list[str]:
        return [self.classes[i] for i in self.probabilities.argmax(1)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "notes": self.notes,
            "predictions": [
                {
                    "query": q,
                    "label": lab,
                    "probabilities": dict(zip(self.classes, map(float, p), strict=True)),
                }
                for q, lab, p in zip(self.queries, self.labels(), self.probabilities, strict=True)
            ],
        }

    def table(self) -> str:
        """One line per query: the label and its probability, then the runners-up."""
        width = max(len(q) for q in self.queries)
        lines = []
        for q, p in zip(self.queries, self.probabilities, strict=True):
            order = np.argsort(-p)
            best = f"{self.classes[order[0]]}  {p[order[0]]:.3f}"
            rest = ", ".join(f"{self.classes[i]} {p[i]:.3f}" for i in order[1:3])
            lines.append(f"{q:{width}s}  {best}" + (f"   (next: {rest})" if rest else ""))
        return "\n".join(lines)


def _expand_queries(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for text in paths:
        p = Path(text).expanduser()
        if p.is_dir():
            found = [f for f in sorted(p.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise DatasetError(f"query folder {p} has no images")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"query {p} does not exist; give image files or folders of images")
    return out


def _image_notes(files: list[Path], size: int, channels: int) -> list[str]:
    from PIL import Image

    seen: dict[tuple[tuple[int, int], str], int] = {}
    for f in files:
        try:
            with Image.open(f) as im:
                seen[(im.size, im.mode)] = seen.get((im.size, im.mode), 0) + 1
        except IMAGE_ERRORS:
            pass  # reported with its path when it is decoded
    target = f"{size}x{size} {'grey' if channels == 1 else 'RGB'}"
    return [
        f"{n} image(s) of {w}x{h} mode {mode} converted to {target}"
        for ((w, h), mode), n in seen.items()
        if (w, h) != (size, size) or (mode != "L" if channels == 1 else mode != "RGB")
    ]


def predict(
    run_dir: str | Path,
    support: str | Path,
    queries: list[str],
    checkpoint: str = "best",
    *,
    allow_nonfinite: bool = False,
    device: str | torch.device | None = None,
) -> Prediction:
    """Adapts the run's model to ``support`` and returns class probabilities for every query.

    Args:
        run_dir: a trained run's directory.
        support: a folder of class folders (image runs) or a table with the label column (table runs).
        queries: image files or folders (image runs), or one table (table runs).
        checkpoint: ``best`` (the best validation, else the last) or ``last``.
        allow_nonfinite: table runs: accept NaN and infinite feature values in the support and query tables
            (refused by default, naming file, row and column). Whatever the inputs, a query whose probabilities
            come out non-finite is refused with its name: no NaN probability is ever returned.
        device: where the run's network is loaded and run (``cpu``, ``cuda``, ``auto``, ...; None: the CPU); the
            support and queries are read on the CPU and moved there.

    Raises:
        ValueError (DatasetError, FileNotFoundError): bad inputs, or non-finite outputs, with what to change.
    """
    from fewshot.runs import load_run

    run = load_run(run_dir, checkpoint, device)
    model, config = run.model, run.config
    if config.data == "regression":
        raise ValueError("predict labels classes; this run is a regressor")
    if config.data == "bandit":
        raise ValueError(
            "predict labels classes; this run plays bandits: score it with `fewshot eval RUN` or "
            "`fewshot compare RUN baselines`"
        )
    notes: list[str] = []
    if config.dataset == "text":
        classes, support_x, support_y, query_x, names = _text_inputs(config, support, queries)
    elif config.dataset == "table":
        xs, ys = read_table(support, config.label_column, allow_nonfinite)
        classes = sorted(set(ys))
        index = {c: i for i, c in enumerate(classes)}
        support_x, support_y = torch.from_numpy(xs), torch.tensor([index[v] for v in ys])
        qpath = Path(queries[0]).expanduser() if len(queries) == 1 else None
        if qpath is None:
            raise ValueError("a table run takes one query table (--query rows.csv)")
        qx, _ = _query_table(qpath, config.label_column, allow_nonfinite)
        query_x = torch.from_numpy(qx)
        names = [f"{qpath.name}:{i + 1}" for i in range(len(qx))]
        if (
            support_x.shape[1] != (config.in_features or support_x.shape[1])
            or qx.shape[1] != support_x.shape[1]
        ):
            raise ValueError(
                f"the model takes {config.in_features} features; the support has {support_x.shape[1]}, the queries "
                f"{qx.shape[1]}"
            )
    else:
        channels = config.in_features or 1
        size = config.image_size
        folders = class_folders(Path(support).expanduser())
        files = {f.name: image_files(f) for f in folders}
        for name, fs in files.items():
            if not fs:
                raise DatasetError(f"support class {name!r} has no images; give at least one per class")
        classes = list(files)
        qfiles = _expand_queries(queries)
        every = [f for fs in files.values() for f in fs] + qfiles
        notes += _image_notes(every, size, channels)
        invert = config.invert
        if invert:
            notes.append("inverted the images (255 - pixel), as the run's training data was (--invert)")
        if config.dataset == "omniglot":  # trained on bright strokes on black: flip light-background drawings
            mean = float(np.mean([load_image(f, size, 1).mean() for f in every]))
            invert = mean > 127
            if invert:
                notes.append("inverted the images (light background; the model saw bright strokes on black)")
        support_x = (
            torch.from_numpy(
                np.stack([load_image(f, size, channels, invert) for fs in files.values() for f in fs])
            ).float()
            / 255
        )
        support_y = torch.tensor([i for i, fs in enumerate(files.values()) for _ in fs])
        query_x = (
            torch.from_numpy(np.stack([load_image(f, size, channels, invert) for f in qfiles])).float() / 255
        )
        names = [str(f) for f in qfiles]
    ways = len(classes)
    if config.spec.fixed_ways and ways != config.ways:
        raise ValueError(
            f"this {config.algorithm} model has a {config.ways}-way head; give exactly {config.ways} support classes"
            f" (got {ways})"
        )
    if ways < 2:
        raise ValueError(f"give at least 2 support classes (got {ways})")
    algorithm, params = run.algorithm(testing=True), run.params
    model.eval()
    if running_stats_layers(model, tracking=False):
        notes.append(
            "this model normalises with the statistics of the images it is given (MAML-style BatchNorm): the "
            "queries are labelled together, and one query's answer can depend on the others given with it"
        )
    target = devices.device_of(params, model) or torch.device("cpu")  # where load_run put the network
    support_x, support_y, query_x = support_x.to(target), support_y.to(target), query_x.to(target)
    with torch.no_grad():
        state = algorithm.adapt(model, params, Split(support_x, support_y), ways)
        probs = algorithm.probabilities(algorithm.predict(model, params, state, query_x)).float()
    _check_finite_outputs(probs, names, model, params, support_x, query_x)
    return Prediction(classes, names, probs.cpu().numpy(), notes)


def _text_inputs(config, support: str | Path, queries: list[str]):
    """Support utterances with their labels and query utterances (files in the layouts of
    :func:`~fewshot.datasets.text.read_texts`), embedded by the run's encoder through the embedding cache."""
    from fewshot.datasets.text import read_texts, text_encoder
    from fewshot.encoders import embed_texts

    texts, labels = read_texts(support, config.text_column, config.label_column)
    classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    query_texts = []
    for q in queries:
        query_texts += read_texts(q, config.text_column, None)[0]
    encoder = text_encoder(config.encoder, config.finetune_layers, config.max_tokens)
    vectors = torch.from_numpy(embed_texts(texts + query_texts, encoder, progress=False))
    if config.in_features is not None and vectors.shape[1] != config.in_features:
        raise ValueError(
            f"the encoder {config.encoder} gives {vectors.shape[1]} values per utterance but the run was trained on "
            f"{config.in_features}; the model folder changed since training"
        )
    support_y = torch.tensor([index[v] for v in labels])
    return classes, vectors[: len(texts)], support_y, vectors[len(texts) :], query_texts


def _check_finite_outputs(
    probs: torch.Tensor,
    names: list[str],
    model: torch.nn.Module,
    params: dict[str, torch.Tensor],
    support_x: torch.Tensor,
    query_x: torch.Tensor,
) -> None:
    """Refuses probabilities that are not finite, naming the first such query and the likely cause."""
    bad = (~torch.isfinite(probs).all(1)).nonzero()[:, 0].tolist()  # query indices
    if not bad:
        return
    tensors = {**dict(model.named_buffers()), **params}
    weight = next(
        (k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()), None
    )
    if weight is not None:
        cause = (
            f"the run's weights are not finite ({weight} holds NaN or infinity: the training diverged); retrain "
            "it, e.g. with a smaller outer learning rate"
        )
    elif not torch.isfinite(support_x).all() or not torch.isfinite(query_x[bad[0]]).all():
        cause = "the inputs are not finite (NaN or infinite features in the support or this query); fix them"
    else:
        largest = float(torch.cat([support_x.flatten(), query_x.flatten()]).abs().max())
        cause = (
            f"the inputs or the run's weights are too large for the model (the largest input is {largest:.3g}); "
            "scale the features as the training data was"
        )
    others = f" ({len(bad) - 1} other queries too)" if len(bad) > 1 else ""
    raise ValueError(f"query {names[bad[0]]}: the model's probabilities are not finite{others}: {cause}")


def _query_table(path: Path, label: str, allow_nonfinite: bool = False) -> tuple[np.ndarray, list[str]]:
    """Query rows: a table with a header row, with or without the label column (ignored if present)."""
    if path.suffix.lower() == ".csv" and path.is_file():
        header, body = read_csv(path)
        if all(is_number(v) for v in header):
            raise DatasetError(
                f"{path} has no header row (its first row is numbers); add one naming the columns"
            )
        if label not in header:
            if not body:
                raise DatasetError(f"{path} has no rows under its header")
            return numeric_rows(path, header, body, "every column", allow_nonfinite), []
    return read_table(path, label, allow_nonfinite)
