"""Labelled utterances (few-shot intent detection and other text classification) as embedded vectors.

Files read (``--dataset text --data-root PATH``):

* ``.csv`` / ``.tsv``: a header row, one utterance per row; the text and label columns are named by
  ``text_column`` (default ``text``) and ``label_column`` (default ``label``);
* ``.jsonl`` (JSON lines): one object per line with those two keys;
* the two-file layout of intent-detection sets (HWU64, BANKING77, CLINC150 as Zhang et al. 2021 publish them):
  a folder holding ``seq.in`` (one utterance per line) and ``label`` (its intent on the same line), or the path of
  ``seq.in`` itself, or a folder whose subfolders (``train``, ``valid``, ``test``) each hold the pair; their
  utterances are pooled, since few-shot splits the *intents*, not the utterances.

Classes (intents) are split into training, validation and test classes by a seeded split of the classes (as for
image folders and tables), or by lists the user gives (``split_lists``: a folder with ``train.txt``, ``val.txt``
and ``test.txt``, one class per line). Every utterance is embedded by a sentence encoder
(:mod:`fewshot.encoders`), once, and cached; the data set is then a
:class:`~fewshot.datasets.table.FeatureDataset` of embeddings, on which every algorithm that reads vectors works.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from fewshot.datasets.folder import SPLITS, split_classes
from fewshot.datasets.storage import DatasetError
from fewshot.datasets.table import FeatureDataset

TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl")


class TextDataset(FeatureDataset):
    """A :class:`FeatureDataset` of embeddings that also keeps the utterances (``texts``, one per row)."""

    def __init__(self, features, labels, class_names, texts: list[str]) -> None:
        super().__init__(features, labels, class_names)
        self.texts = texts

    def subset(self, keep: torch.Tensor) -> TextDataset:
        kept = [t for t, k in zip(self.texts, keep.tolist(), strict=True) if k]
        return TextDataset(self.features[keep], self.labels[keep], self.class_names, kept)

    def __repr__(self) -> str:
        return f"TextDataset({len(self)} utterances as {self.features.shape[1]}-d embeddings, {self.num_classes} classes)"


def read_texts(
    path: str | Path, text_column: str = "text", label_column: str | None = "label"
) -> tuple[list[str], list[str] | None]:
    """``(utterances, labels)`` from one of the layouts of the module docstring.

    ``label_column=None`` reads utterances alone (queries): labels are then None, and a plain ``.txt`` file (one
    utterance per line) is read too. Raises FileNotFoundError or DatasetError naming the file (and line).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; give a .csv, .tsv or .jsonl file, or a seq.in/label folder"
        )
    if path.is_dir() or path.name == "seq.in":
        return _read_seq_in(path, label_column is not None)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        texts, labels = _read_delimited(path, "\t" if suffix == ".tsv" else ",", text_column, label_column)
    elif suffix in (".jsonl", ".json"):
        texts, labels = _read_jsonl(path, text_column, label_column)
    elif suffix == ".txt" and label_column is None:
        texts, labels = [line.strip() for line in _lines(path) if line.strip()], None
    else:
        raise DatasetError(
            f"{path}: text data is a .csv, .tsv or .jsonl file (or a folder with seq.in and label)"
            + ("; queries may also be a .txt with one utterance per line" if label_column is None else "")
        )
    if not texts:
        raise DatasetError(f"{path} has no utterances")
    return texts, labels


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from e


def _read_delimited(
    path: Path, delimiter: str, text_column: str, label_column: str | None
) -> tuple[list[str], list[str] | None]:
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            rows = [(reader.line_num, r) for r in reader if r]
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from e
    except csv.Error as e:
        raise DatasetError(f"{path} is not a readable {kind} ({e})") from e
    if not rows:
        raise DatasetError(
            f"{path} is empty; give a header row naming the columns, then one utterance per row"
        )
    header = rows[0][1]
    wanted = [text_column] + ([label_column] if label_column is not None else [])
    for name in wanted:
        if name not in header:
            which = "text" if name == text_column else "label"
            raise DatasetError(
                f"{path} has no {name!r} column (columns: {header}); name the {which} column with "
                f"--{which}-column"
            )
    ti = header.index(text_column)
    li = header.index(label_column) if label_column is not None else None
    texts, labels = [], []
    for line, r in rows[1:]:
        if len(r) != len(header):
            raise DatasetError(
                f"{path}: line {line} has {len(r)} fields, the header {len(header)}; quote texts that hold "
                f"{'tabs' if delimiter == chr(9) else 'commas'}"
            )
        text = r[ti].strip()
        if not text:
            raise DatasetError(f"{path}: line {line} has an empty {text_column!r}; remove the row")
        texts.append(text)
        if li is not None:
            if not r[li].strip():
                raise DatasetError(f"{path}: line {line} has an empty {label_column!r}; label every row")
            labels.append(r[li].strip())
    return texts, labels if li is not None else None


def _read_jsonl(path: Path, text_column: str, label_column: str | None) -> tuple[list[str], list[str] | None]:
    texts, labels = [], []
    for n, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(
                f"{path}: line {n} is not JSON ({e.msg}); write one JSON object per line"
            ) from e
        if not isinstance(obj, dict):
            raise DatasetError(
                f"{path}: line {n} is not a JSON object; write {{{text_column!r}: ..., ...}} per line"
            )
        for key in [text_column] + ([label_column] if label_column is not None else []):
            value = obj.get(key)
            if not isinstance(value, (str, int)) or not str(value).strip():
                which = "text" if key == text_column else "label"
                raise DatasetError(
                    f"{path}: line {n} has no {key!r} (keys: {sorted(obj)}); name the {which} key with --{which}-column"
                )
        texts.append(str(obj[text_column]).strip())
        if label_column is not None:
            labels.append(str(obj[label_column]).strip())
    return texts, labels if label_column is not None else None


def _seq_in_pairs(path: Path) -> list[Path]:
    """The folders holding ``seq.in`` (and ``label``) under ``path``: itself, or its subfolders."""
    if path.is_file():
        return [path.parent]
    if (path / "seq.in").is_file():
        return [path]
    found = sorted(p for p in path.iterdir() if (p / "seq.in").is_file())
    if not found:
        raise DatasetError(
            f"{path} holds no seq.in (itself or in its subfolders); give a folder with seq.in and label, or a "
            ".csv / .tsv / .jsonl file"
        )
    return found


def _read_seq_in(path: Path, with_labels: bool) -> tuple[list[str], list[str] | None]:
    texts, labels = [], []
    for folder in _seq_in_pairs(path):
        lines = _lines(folder / "seq.in")
        if with_labels:
            if not (folder / "label").is_file():
                raise DatasetError(
                    f"{folder} has seq.in but no label file; give each utterance's intent in label"
                )
            tags = _lines(folder / "label")
            if len(tags) != len(lines):
                raise DatasetError(
                    f"{folder}: seq.in has {len(lines)} lines and label {len(tags)}; give one label per utterance"
                )
        for n, line in enumerate(lines):
            if not line.strip():
                raise DatasetError(f"{folder / 'seq.in'}: line {n + 1} is empty; remove it (and its label)")
            texts.append(line.strip())
            if with_labels:
                if not tags[n].strip():
                    raise DatasetError(f"{folder / 'label'}: line {n + 1} is empty; label every utterance")
                labels.append(tags[n].strip())
    return texts, labels if with_labels else None


def read_split_lists(folder: str | Path, classes: list[str]) -> dict[str, list[str]]:
    """The classes of each split from ``folder/{train,val,test}.txt`` (one per line): disjoint, and every one
    present in the data. Classes of the data in no list are left out."""
    folder = Path(folder).expanduser()
    lists: dict[str, list[str]] = {}
    for split in SPLITS:
        f = folder / f"{split}.txt"
        if not f.is_file():
            raise DatasetError(f"class lists {folder} lack {split}.txt; give train.txt, val.txt and test.txt")
        lists[split] = [line.strip() for line in _lines(f) if line.strip()]
    seen: dict[str, str] = {}
    known = set(classes)
    for split, names in lists.items():
        twice = sorted(n for n in set(names) if names.count(n) > 1)
        if twice:
            raise DatasetError(
                f"{folder / (split + '.txt')} names class {twice[0]!r} twice; name each class once"
            )
        for name in names:
            if name in seen and seen[name] != split:
                raise DatasetError(
                    f"class {name!r} is in both {seen[name]}.txt and {split}.txt; a class has one split"
                )
            seen[name] = split
            if name not in known:
                raise DatasetError(
                    f"{folder / (split + '.txt')} names class {name!r}, which the data does not have"
                )
    return lists


def text_dataset(
    path: str | Path,
    split: str = "all",
    text_column: str = "text",
    label_column: str = "label",
    fractions: tuple[float, float] = (0.2, 0.2),
    seed: int = 0,
    encoder: str = "all-MiniLM-L6-v2",
    split_lists: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    finetune_layers: int = 0,
    max_tokens: int = 32,
) -> TextDataset:
    """Utterances of the classes of ``split`` as a :class:`TextDataset` of sentence embeddings.

    The whole file is read and checked, and every utterance embedded (once: later calls read the cache), whichever
    split is asked for, so a bad line in a test class is found before training. With ``finetune_layers`` the
    vectors are the :class:`~fewshot.encoders.TokenStates` below the encoder's last layers, not embeddings.
    """
    from fewshot.encoders import embed_texts

    texts, labels = read_texts(path, text_column, label_column)
    assert labels is not None
    names = sorted(set(labels))
    if split_lists:
        lists = read_split_lists(split_lists, names)
        if split not in (*SPLITS, "all"):
            raise ValueError(f"unknown split {split!r}; choose one of {[*SPLITS, 'all']}")
        keep = names if split == "all" else lists[split]
    else:
        keep = [names[i] for i in split_classes(names, split, fractions, seed)]
    vectors = embed_texts(texts, text_encoder(encoder, finetune_layers, max_tokens), cache_dir, progress)
    index = {name: i for i, name in enumerate(keep)}
    rows = [i for i, v in enumerate(labels) if v in index]
    y = torch.tensor([index[labels[i]] for i in rows], dtype=torch.long)
    return TextDataset(torch.from_numpy(vectors[rows]), y, keep, [texts[i] for i in rows])


def text_encoder(name: str, finetune_layers: int = 0, max_tokens: int = 32):
    """What turns a run's utterances into its vectors: the sentence encoder ``name``, or the token states below
    its last ``finetune_layers`` layers."""
    from fewshot.encoders import SentenceEncoder, TokenStates

    encoder = SentenceEncoder(name)
    return TokenStates(encoder, finetune_layers, max_tokens) if finetune_layers else encoder
