"""Presets from the literature and config files: layering, and refusal of what does not exist."""

from __future__ import annotations

import json
import re

import pytest

from fewshot.cli import main
from fewshot.config import TrainConfig
from fewshot.presets import PRESETS, read_config_file, resolve
from fewshot.registry import algorithms


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_config_and_cites_its_source(name):
    config = TrainConfig.of(**PRESETS[name].settings)
    assert config.algorithm in algorithms()
    assert re.search(r"\b20[0-2][0-9]\b", PRESETS[name].source)  # a paper and its year


def test_layers_defaults_preset_file_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"preset": "maml-omniglot-5w1s", "inner_lr": 0.2, "max_minutes": 3}))
    settings, origins = resolve("protonet-omniglot-1shot", path, {"max_minutes": 5.0})
    config = TrainConfig.of(origins=origins, **settings)
    assert origins["max_minutes"] == "command line" and origins["inner_lr"] == str(path)
    assert config.algorithm == "maml" and config.tasks_per_step == 32  # the file's preset replaced the flag's
    assert config.settings.inner_lr == 0.2 and config.max_minutes == 5.0  # file over preset, flags over file
    assert isinstance(config.max_minutes, float)  # an int in the file is fine where a float is expected
    assert config.outer_lr == TrainConfig().outer_lr  # untouched values keep the defaults


def test_finn_et_al_settings_are_the_papers():
    c = TrainConfig.of(**PRESETS["maml-omniglot-20w1s"].settings)
    s = c.settings
    assert (c.ways, c.shots, s.inner_lr, s.inner_steps, c.tasks_per_step, s.test_inner_steps) == (
        20,
        1,
        0.1,
        5,
        16,
        10,
    )
    s = TrainConfig.of(**PRESETS["maml-sinusoid"].settings)
    assert (s.dataset, s.shots, s.settings.inner_lr, s.tasks_per_step, s.steps) == (
        "sinusoid",
        10,
        0.01,
        25,
        70_000,
    )


@pytest.mark.parametrize(
    "content, message",
    [
        ({"shost": 5}, "unknown setting 'shost' (did you mean 'shots'?)"),
        ({"shots": "5"}, "shots must be int"),
        ({"bf16": 1}, "bf16 must be bool"),
        ({"preset": "maml"}, "unknown preset 'maml'"),
        ([1, 2], "holds one object"),
    ],
)
def test_bad_config_files_are_refused_with_the_choices(tmp_path, content, message):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=re.escape(message)):
        read_config_file(path)


def test_cli_list_and_refusals(tmp_path, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS) and "Finn, Abbeel & Levine 2017" in out
    assert main(["train", "--preset", "nope", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert (
        "unknown preset 'nope'" in err and "maml-omniglot-5w1s" in err and len(err.strip().splitlines()) == 1
    )
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["train", "--config", str(tmp_path / "bad.json"), "--run-dir", str(tmp_path / "r")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written for a refused command


@pytest.mark.parametrize(
    "name, content",
    [
        ("c.json", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),  # an image given by mistake
        ("c.json", '{"preset": "maml-omniglot-5w1s", "note": "café"}'.encode("latin-1")),
        ("c.toml", 'preset = "maml-omniglot-5w1s" # résumé\n'.encode("latin-1")),
    ],
)
def test_config_files_that_are_not_utf8_are_refused_naming_the_file(tmp_path, capsys, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as e:
        read_config_file(path)
    message = str(e.value)
    kind = "TOML" if name.endswith(".toml") else "JSON"
    assert str(path) in message and "not UTF-8" in message and f"{kind} saved as UTF-8" in message, message
    assert "\n" not in message and not isinstance(e.value, UnicodeDecodeError)
    assert main(["train", "--config", str(path), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fewshot: error: ") and str(path) in err and len(err.strip().splitlines()) == 1


def test_a_config_file_may_start_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(json.dumps({"shots": 3}).encode("utf-8-sig"))  # as Windows Notepad saves it
    assert read_config_file(path) == {"shots": 3}
