"""A new user's first hour, as the README tells it: a fresh virtual environment, their own image folder,
predictions for new drawings, the report's plots. Runs the README's own commands (shortened training)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import venv
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def readme_commands(section: str) -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", body, re.S).group(1).replace("\\\n", " ")
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def write_drawings(base: Path) -> None:
    """Omniglot PNGs as a user would have them (105x105, black ink on white): 40 characters to train on (the
    trainer keeps 8 for validation and 8 for testing), and 5 other characters with one labelled drawing each
    plus 2 new drawings to label."""
    from fewshot import omniglot

    data = omniglot("test")
    for c in range(45):
        images = data.images[data.labels == c * 20]
        name = data.class_names[c * 20].split("/rot")[0].replace("/", "_")
        for j, img in enumerate(images):
            im = Image.fromarray(255 - img[0].numpy()).resize((105, 105))
            if c < 40:
                folder = base / "my_characters" / name
            elif j == 0:
                folder = base / "my_support" / name
            elif j < 3:
                (base / "new_drawings").mkdir(parents=True, exist_ok=True)
                im.save(base / "new_drawings" / f"{name}_{j}.png")
                continue
            else:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            im.save(folder / f"{j:02d}.png")


def test_readme_own_data_walkthrough_in_a_fresh_venv(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    install = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", str(ROOT / "constraints.txt"),
               f"{ROOT}[plot]"]  # fmt: skip
    subprocess.run(install, check=True, cwd=tmp_path, timeout=600)
    work = tmp_path / "work"
    work.mkdir()
    write_drawings(work)
    env = dict(os.environ, PATH=f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}")
    for cmd in readme_commands("Your own data"):
        assert cmd[0] == "fewshot"
        if cmd[1] == "train":  # a test cannot train for minutes: same command, 30 steps
            i = cmd.index("--max-minutes")
            cmd[i : i + 2] = ["--steps", "30", "--log-every", "10", "--val-every", "10", "--val-episodes", "5",
                              "--test-episodes", "10", "--quiet"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        if cmd[1] == "predict":
            lines = proc.stdout.strip().splitlines()
            assert any(line.startswith("note: ") and "inverted" in line for line in lines)
            answers = [line for line in lines if not line.startswith("note: ")]
            assert len(answers) == 10 and all("new_drawings" in line for line in answers)
    for png in ("training.png", "shots.png"):
        assert (work / "runs" / "mine" / "report" / png).stat().st_size > 1000
    assert sys.executable != str(py)  # the commands above ran the fresh environment's own `fewshot`
