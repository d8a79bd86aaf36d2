"""The explorers' HTTP API: every endpoint's contract, its numbers against fewshot computed directly, bad input
answered with a 4xx and a message (never a 500), and concurrent requests against a real uvicorn server."""

from __future__ import annotations

import base64
import io
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the web extra is not installed: pip install 'fewshot[web]'")
pytest.importorskip("httpx", reason="the API tests need httpx (in the test extra)")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from fewshot import ProtoNet, omniglot  # noqa: E402
from fewshot.algorithms.lsa import InContext  # noqa: E402
from fewshot.algorithms.maml import MAML  # noqa: E402
from fewshot.algorithms.neural_process import NeuralProcessLearner  # noqa: E402
from fewshot.cli import main  # noqa: E402
from fewshot.regression_baselines import tuned_gradient_descent  # noqa: E402
from fewshot.tasks.episodes import Split  # noqa: E402
from fewshot.tasks.linear import FunctionTasks  # noqa: E402
from fewshot.tasks.regression import Sinusoid  # noqa: E402
from fewshot.web import drawing, explorers  # noqa: E402
from fewshot.web.app import create_app  # noqa: E402
from fewshot.web.models import ANP_FILE, INCONTEXT_FILE, MAML_FILE, OMNIGLOT_FILE, web_models  # noqa: E402
from fewshot.web.server import running  # noqa: E402


@pytest.fixture(scope="module")
def client() -> TestClient:
    with TestClient(create_app()) as c:
        yield c


@pytest.fixture(scope="module")
def test_split():
    return omniglot("test")


def png_url(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def as_canvas(image28: np.ndarray, side: int = 300, pen: int = 9, invert: bool = False) -> np.ndarray:
    """A 28x28 Omniglot drawing as a user's canvas might hold it: enlarged, thresholded, a thick pen."""
    big = Image.fromarray(image28).resize((side, side), Image.Resampling.BILINEAR)
    big = Image.fromarray((np.asarray(big) > 100).astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(pen))
    a = np.asarray(big)
    return 255 - a if invert else a


# ----------------------------------------------------------------------------------------------------------
# pages and info


def test_pages_static_files_and_info(client):
    for path in ("/", "/protonet", "/maml", "/omniglot", "/incontext"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        assert "/static/common.js" in r.text and r.text.startswith("<!doctype html>")
        assert "{title}" not in r.text and "{body}" not in r.text and "<!-- title:" not in r.text
    assert client.get("/static/common.js").status_code == 200
    assert client.get("/static/common.css").status_code == 200
    info = client.get("/api/info").json()
    assert info["maml"]["training"]["inner_lr"] == 0.01
    assert info["maml"]["training"]["method"] == "maml"
    assert info["pretrained"]["training"]["method"] == "pretrain_jointly"
    mse = info["maml"]["measured"]["query_mse_after_steps"]
    assert set(mse) == {"0", "1", "5", "10"}
    assert info["protonet"]["measured"]["5w1s"]["episodes"] >= 600
    assert info["incontext"]["training"]["noise"] == 0.5 and info["incontext"]["training"]["shots"] == 20
    curves = info["incontext"]["measured"]["query_mse_against_k"]
    assert curves["k"] == list(range(21)) and curves["prompts"] >= 1000
    assert {"transformer", "least squares", "ridge (Bayes-optimal)"} <= set(curves["methods"])
    assert all(len(m["mean"]) == len(m["ci95"]) == 21 for m in curves["methods"].values())
    anp = info["anp"]
    assert anp["training"]["method"] == "anp" and anp["training"]["attention"] is True
    assert (
        anp["training"]["shots"] == anp["training"]["queries"] == 10 and anp["training"]["test_tasks"] >= 600
    )
    assert {"5", "10"} <= set(anp["measured"]["query_mse"]) and {"5", "10"} <= set(
        anp["measured"]["query_nll"]
    )
    assert client.get("/nope").json() == {"error": "Not Found"}
    assert client.get("/api/maml/adapt").status_code == 405
    assert "/api/omniglot/classify" in client.get("/openapi.json").json()["paths"]


def test_shipped_models_measured_what_the_readme_says(test_split):
    """The build script's numbers, as stored in the shipped files: MAML adapts, pretraining barely does, and
    ProtoNet is a real one-shot classifier; and the shipped ProtoNet, measured here on 100 test episodes of
    held-out characters (other episodes than the build script's), agrees with its recorded accuracy."""
    from fewshot.evaluate import evaluate

    models = web_models()
    maml = models.maml.info["measured"]["query_mse_after_steps"]
    pretrained = models.pretrained.info["measured"]["query_mse_after_steps"]
    assert maml["10"][0] < 0.3 < 1.0 < pretrained["10"][0]
    assert maml["1"][0] < pretrained["1"][0] / 3
    # the neural process, in one forward pass, predicts held-out curves better than MAML after 10 steps
    anp = models.anp.info["measured"]
    assert anp["query_mse"]["10"][0] < maml["10"][0] and anp["query_mse"]["10"][0] < anp["query_mse"]["5"][0]
    assert anp["query_nll"]["10"][0] < anp["query_nll"]["5"][0]
    recorded = models.protonet.info["measured"]["5w1s"]["mean"]
    assert recorded > 0.95
    with models.protonet.lock:
        measured = evaluate(
            ProtoNet(), models.protonet.model, test_split, 5, 1, 15, 100, seed=123, progress=False
        )
    assert abs(measured.mean - recorded) < 3 * measured.ci95 + 0.01, (measured, recorded)


# ----------------------------------------------------------------------------------------------------------
# ProtoNet explorer


def test_protonet_task_is_a_pure_function_of_the_seed(client):
    a = client.get("/api/protonet/task", params={"ways": 4, "shots": 3, "queries": 5, "seed": 11}).json()
    b = client.get("/api/protonet/task", params={"ways": 4, "shots": 3, "queries": 5, "seed": 11}).json()
    c = client.get("/api/protonet/task", params={"ways": 4, "shots": 3, "queries": 5, "seed": 12}).json()
    assert a == b and a["support"] != c["support"]
    assert len(a["support"]["x"]) == 12 and sorted(set(a["support"]["y"])) == [0, 1, 2, 3]
    assert a["support"]["y"] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert len(a["query"]["x"]) == 20 and len(a["centres"]) == 4
    task = explorers.GaussianClusters(4, 3, 5, 11).task()
    assert np.allclose(a["support"]["x"], task.support.x.numpy(), atol=1e-5)


def test_protonet_classify_equals_fewshot_protonet(client):
    task = client.get("/api/protonet/task", params={"ways": 6, "shots": 4, "seed": 3}).json()
    clicks = [[0.3, -1.2], [4.0, 4.0], [-5.5, 2.25]]
    r = client.post("/api/protonet/classify", json={
        "ways": 6, "support": task["support"], "points": clicks, "resolution": 40,
    })  # fmt: skip
    assert r.status_code == 200, r.text
    out = r.json()
    x, y = torch.tensor(task["support"]["x"]), torch.tensor(task["support"]["y"])
    means = torch.stack([x[y == k].mean(0) for k in range(6)])  # prototypes are class means
    assert np.allclose(out["prototypes"], means.numpy(), atol=1e-4)
    logits = ProtoNet().predict(torch.nn.Identity(), {}, means, torch.tensor(clicks))
    assert np.allclose(out["points"]["probabilities"], logits.softmax(-1).numpy(), atol=1e-5)
    # the predicted class is the nearest prototype
    nearest = torch.cdist(torch.tensor(clicks), means).argmin(1)
    assert out["points"]["labels"] == nearest.tolist()
    assert np.allclose(np.sum(out["points"]["probabilities"], 1), 1, atol=1e-4)
    grid = out["grid"]
    assert np.array(grid["labels"]).shape == (40, 40)
    for i, j in [(0, 0), (39, 0), (0, 39), (20, 17), (33, 5)]:  # row i: y from the bottom; column j: x
        centre = torch.tensor([[-6 + (j + 0.5) * 12 / 40, -6 + (i + 0.5) * 12 / 40]])
        assert grid["labels"][i][j] == int(torch.cdist(centre, means).argmin())
    assert len(set(np.array(grid["labels"]).ravel().tolist())) > 1
    assert all(1 / 6 - 1e-3 <= c <= 1 for row in grid["confidence"] for c in row)


# ----------------------------------------------------------------------------------------------------------
# MAML visualizer


def test_maml_task_is_fewshot_sinusoid(client):
    out = client.get("/api/maml/task", params={"shots": 7, "seed": 5, "points": 50}).json()
    family = Sinusoid(shots=7, queries=1, seed=5)
    amplitude, phase = family.parameters(0)
    assert out["amplitude"] == pytest.approx(amplitude) and out["phase"] == pytest.approx(phase)
    assert np.allclose(out["support"]["x"], family.task(0).support.x[:, 0].numpy(), atol=1e-5)
    assert np.allclose(
        out["support"]["y"], amplitude * np.sin(np.array(out["support"]["x"]) - phase), atol=1e-4
    )
    assert len(out["curve"]["x"]) == 50 and out["curve"]["x"][0] == -5 and out["curve"]["x"][-1] == 5


def test_maml_step_k_equals_fewshot_inner_loop_run_k_steps(client):
    xs, ys = [-4.0, -2.5, -1.0, 0.5, 2.0, 3.5], [1.5, -2.0, 0.7, 2.2, -1.1, 0.4]
    r = client.post("/api/maml/adapt", json={"x": xs, "y": ys, "steps": 10, "points": 60})
    assert r.status_code == 200, r.text
    out = r.json()
    models = web_models()
    support = Split(torch.tensor(xs).unsqueeze(-1), torch.tensor(ys).unsqueeze(-1))
    grid = explorers.sinusoid_grid(60)
    for name, loaded in (("maml", models.maml), ("pretrained", models.pretrained)):
        curves = np.array(out[name]["curves"])
        assert curves.shape == (11, 60)
        params = dict(loaded.model.named_parameters())
        for k in range(11):
            maml = MAML(inner_lr=0.01, inner_steps=k)
            fast = maml.adapt(loaded.model, params, support, 0)  # fewshot's own inner loop, k steps at once
            with torch.no_grad():
                expected = maml.predict(loaded.model, params, fast, grid)[:, 0]
                support_mse = (
                    (maml.predict(loaded.model, params, fast, support.x) - support.y).square().mean()
                )
            assert np.allclose(curves[k], expected.numpy(), atol=1e-4), (name, k)
            assert out[name]["support_mse"][k] == pytest.approx(support_mse.item(), abs=1e-4)
        assert out[name]["support_mse"][10] < out[name]["support_mse"][0]
    assert "truth" not in out and "true_mse" not in out["maml"]


def test_maml_beats_pretrained_on_random_tasks(client):
    """The meta-learned initialisation fits a new sinusoid from 10 points in a few steps; the jointly pretrained
    network, taking the same steps, does not (Finn et al. 2017, figure 2)."""
    maml, pretrained = [], []
    for seed in range(8):
        task = client.get("/api/maml/task", params={"shots": 10, "seed": seed}).json()
        truth = {"amplitude": task["amplitude"], "phase": task["phase"]}
        out = client.post("/api/maml/adapt", json={**task["support"], "steps": 10, "truth": truth}).json()
        assert np.allclose(out["truth"]["y"], task["curve"]["y"], atol=1e-3)
        maml.append(out["maml"]["true_mse"])
        pretrained.append(out["pretrained"]["true_mse"])
    maml, pretrained = np.mean(maml, 0), np.mean(pretrained, 0)
    assert maml[10] < 0.5 and maml[10] < maml[0] / 4
    assert maml[1] < pretrained[1] / 2 and maml[10] < pretrained[10] / 2


def anp_direct(xs: list[float], ys: list[float], x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The shipped neural process's mean and sd at ``x`` given the points, by fewshot's learner directly."""
    loaded, learner = web_models().anp, NeuralProcessLearner()
    support = Split(torch.tensor(xs).reshape(-1, 1), torch.tensor(ys).reshape(-1, 1))
    params = dict(loaded.model.named_parameters())
    with loaded.lock, torch.no_grad():
        state = learner.adapt(loaded.model, params, support, 0)
        mean, sd = learner.distribution(loaded.model, params, state, x)
    return mean[:, 0].numpy(), sd[:, 0].numpy()


def test_neural_process_equals_fewshot_and_gives_its_prior_without_points(client):
    grid = explorers.sinusoid_grid(60)
    for xs, ys in (([], []), ([-4.0, -1.0, 0.5, 3.0], [1.5, -2.0, 0.7, 2.2])):
        r = client.post("/api/maml/np", json={"x": xs, "y": ys, "points": 60})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["k"] == len(xs) and len(out["x"]) == len(out["mean"]) == len(out["sd"]) == 60
        assert np.allclose(out["x"], grid[:, 0].numpy(), atol=1e-5)
        mean, sd = anp_direct(xs, ys, grid)
        assert np.allclose(out["mean"], mean, atol=1e-4) and np.allclose(out["sd"], sd, atol=1e-4)
        assert min(out["sd"]) >= 0.1  # the network's floor: never 0
        assert "true_mse" not in out
    prior = client.post("/api/maml/np", json={"x": [], "y": []}).json()
    assert prior["k"] == 0 and prior["support_mse"] is None and len(prior["mean"]) == 200
    # with no points: the mean and sd of y = A sin(x - b) over the task family, A ~ U[0.1, 5], b ~ U[0, pi],
    # which the best Gaussian guess matches: E y = -2 E[A] cos(x) / pi, E y^2 = E[A^2] / 2
    x = np.array(prior["x"])
    mean_a, mean_a2 = (0.1 + 5) / 2, (5**3 - 0.1**3) / (3 * 4.9)
    mean = -2 * mean_a * np.cos(x) / np.pi
    sd = np.sqrt(mean_a2 / 2 - mean**2)
    assert np.abs(np.array(prior["mean"]) - mean).max() < 0.3
    assert np.abs(np.array(prior["sd"]) - sd).max() < 0.3
    # the same answer for the same points in another order, and the mean's support MSE as computed here
    xs, ys = [2.0, -3.0, 0.0], [1.0, -0.5, 2.0]
    a = client.post("/api/maml/np", json={"x": xs, "y": ys}).json()
    b = client.post("/api/maml/np", json={"x": xs[::-1], "y": ys[::-1]}).json()
    assert np.allclose(a["mean"], b["mean"], atol=2e-4) and np.allclose(a["sd"], b["sd"], atol=2e-4)
    at_points, _ = anp_direct(xs, ys, torch.tensor(xs).unsqueeze(-1))
    assert a["support_mse"] == pytest.approx(float(np.mean((at_points - np.array(ys)) ** 2)), abs=1e-4)


def test_neural_process_band_narrows_near_its_points_and_with_more_of_them(client):
    """The band is narrower at the given points than far from them, and narrows as points are added, down to the
    network's floor (sd 0.1) once they determine the sinusoid (it has two parameters, amplitude and phase)."""
    near, far = [], []
    for seed in range(10):  # random tasks of 2 points
        task = client.get("/api/maml/task", params={"shots": 2, "seed": seed}).json()
        out = client.post("/api/maml/np", json=task["support"]).json()
        x, sd = np.array(out["x"]), np.array(out["sd"])
        distance = np.abs(x[:, None] - np.array(task["support"]["x"])[None]).min(1)
        if (distance > 2).sum() < 10:
            continue
        near.append(sd[distance < 0.1].mean())
        far.append(sd[distance > 2].mean())
    near, far = np.array(near), np.array(far)
    assert len(near) >= 6 and (near < far).all(), (near, far)
    assert near.mean() < 0.6 * far.mean(), (near.mean(), far.mean())
    curve = lambda x: 2.0 * np.sin(x - 1.0)  # noqa: E731
    widths = []  # the band's mean width over [-5, 5] with 0, 1, 2, 5 and 10 points spread over it
    for k in (0, 1, 2, 5, 10):
        xs = np.linspace(-4.5, 4.5, k).round(3)
        r = client.post("/api/maml/np", json={"x": xs.tolist(), "y": curve(xs).round(4).tolist()}).json()
        widths.append(4 * np.mean(r["sd"]))
    assert widths[0] > widths[1] > widths[2] > 4 * widths[3], widths
    assert max(widths[3:]) < 4 * 0.15, widths  # near the floor


def test_neural_process_fits_random_tasks_and_its_band_covers_the_truth(client):
    """On random 10-point tasks the neural process's mean is close to the true curve (no gradient steps: one
    forward pass), and the true curve lies inside its mean +- 2 sd band almost everywhere."""
    mse, inside = [], []
    for seed in range(8):
        task = client.get("/api/maml/task", params={"shots": 10, "seed": seed}).json()
        truth = {"amplitude": task["amplitude"], "phase": task["phase"]}
        out = client.post("/api/maml/np", json={**task["support"], "truth": truth}).json()
        mean, sd, y = np.array(out["mean"]), np.array(out["sd"]), np.array(task["curve"]["y"])
        assert out["true_mse"] == pytest.approx(float(np.mean((mean - y) ** 2)), abs=1e-3)
        mse.append(out["true_mse"])
        inside.append(np.mean(np.abs(mean - y) <= 2 * sd))
    assert np.mean(mse) < 0.3, mse
    assert np.mean(inside) > 0.85, inside


def test_neural_process_refuses_non_finite_numbers(client):
    for body in (b'{"x": [NaN], "y": [0.0]}', b'{"x": [0.0], "y": [-Infinity]}'):
        r = client.post("/api/maml/np", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"], body


# ----------------------------------------------------------------------------------------------------------
# One-shot Omniglot


def test_omniglot_support_is_seeded_and_from_held_out_alphabets(client, test_split):
    a = client.get("/api/omniglot/support", params={"ways": 7, "seed": 4}).json()
    assert a == client.get("/api/omniglot/support", params={"ways": 7, "seed": 4}).json()
    assert (
        a["classes"] != client.get("/api/omniglot/support", params={"ways": 7, "seed": 5}).json()["classes"]
    )
    assert len(a["classes"]) == 7 and len({c["name"] for c in a["classes"]}) == 7
    train_alphabets = {n.split("/")[0] for n in omniglot("train").class_names}
    chosen = explorers.omniglot_support(test_split, 7, 4)
    for k, c in enumerate(a["classes"]):
        assert c["name"].split("/")[0] not in train_alphabets
        assert test_split.class_names.index(c["name"] + "/rot000") >= 0
        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(c["image"].split(",")[1]))))
        assert image.shape == (28, 28) and np.array_equal(image, chosen.images[k, 0].numpy())


def test_omniglot_recognises_other_drawings_of_the_support_characters(client, test_split):
    """Another person's drawing of each support character, enlarged to a 300 px canvas with a thick pen (as a
    mouse drawing would be), is classified as that character: preprocessing brings it back to what the
    network was trained on."""
    right = total = 0
    for seed in range(5):
        chosen = explorers.omniglot_support(test_split, 5, seed)
        for k, name in enumerate(chosen.names):
            c = test_split.class_names.index(name + "/rot000")
            members = torch.nonzero(test_split.labels == c).flatten()
            other = next(
                int(i) for i in members if not torch.equal(test_split.images[int(i)], chosen.images[k])
            )
            # every other seed as dark ink on white paper
            canvas = as_canvas(test_split.images[other, 0].numpy(), invert=seed % 2 == 1)
            out = client.post(
                "/api/omniglot/classify", json={"ways": 5, "seed": seed, "image": png_url(canvas)}
            )
            assert out.status_code == 200, out.text
            out = out.json()
            assert sum(out["probabilities"]) == pytest.approx(1, abs=1e-4)
            assert (
                out["label"] == int(np.argmax(out["probabilities"]))
                and out["name"] == chosen.names[out["label"]]
            )
            right += out["label"] == k
            total += 1
    assert right / total >= 0.8, f"{right} of {total}"


def test_omniglot_classify_equals_fewshot_protonet_on_the_preprocessed_image(client, test_split):
    canvas = as_canvas(test_split.images[123, 0].numpy())
    out = client.post("/api/omniglot/classify", json={"ways": 6, "seed": 2, "image": png_url(canvas)}).json()
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["input"].split(",")[1]))))
    assert seen.shape == (28, 28) and np.array_equal(seen, drawing.to_omniglot(canvas))
    chosen = explorers.omniglot_support(test_split, 6, 2)
    model = web_models().protonet.model
    params = dict(model.named_parameters())
    with torch.no_grad():
        state = ProtoNet().adapt(model, params, Split(chosen.prepared.float() / 255, torch.arange(6)), 6)
        logits = ProtoNet().predict(
            model, params, state, torch.from_numpy(seen.copy())[None, None].float() / 255
        )
    assert np.allclose(out["probabilities"], logits.softmax(-1)[0].numpy(), atol=1e-5)
    # the same picture as rows of grey values gives the same answer
    small = np.asarray(Image.fromarray(canvas).resize((100, 100), Image.Resampling.BOX))
    by_pixels = client.post(
        "/api/omniglot/classify", json={"ways": 6, "seed": 2, "pixels": small.tolist()}
    ).json()
    by_image = client.post(
        "/api/omniglot/classify", json={"ways": 6, "seed": 2, "image": png_url(small)}
    ).json()
    assert by_pixels["probabilities"] == by_image["probabilities"]


def test_drawing_preprocessing():
    line = np.zeros((200, 200), dtype=np.uint8)
    line[90:110, 20:180] = 255  # a 20 px thick horizontal bar
    thin = drawing.skeleton(line > 0)
    assert thin.sum(0)[40:160].max() == 1  # one pixel wide
    out = drawing.to_omniglot(line)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    ys, xs = np.nonzero(out > 128)
    assert xs.max() - xs.min() + 1 in range(16, 20) and ys.max() - ys.min() + 1 <= 3  # 65 of 105 px; thin
    assert np.array_equal(drawing.to_omniglot(255 - line), out)  # dark ink on white paper: the same
    # where on the canvas it was drawn does not matter
    assert np.array_equal(drawing.to_omniglot(np.pad(line, ((0, 300), (50, 0)))), out)
    with pytest.raises(drawing.DrawingError, match="empty"):
        drawing.to_omniglot(np.zeros((50, 50), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------------------
# In-context lines


def test_incontext_transformer_measured_close_to_ridge():
    """The build script's error-against-k curve, as stored: the transformer is near ridge (the Bayes-optimal
    answer) with any number of examples, far better than least squares with 1 or 2 and than a tuned gradient
    step from 3; and the shipped network, measured here on 300 other held-out prompts, agrees with its recorded
    error."""
    from fewshot.evaluate import evaluate_regression

    loaded = web_models().incontext
    methods = loaded.info["measured"]["query_mse_against_k"]["methods"]
    transformer = np.array(methods["transformer"]["mean"])
    ridge = np.array(methods["ridge (Bayes-optimal)"]["mean"])
    squares = np.array(methods["least squares"]["mean"])
    descent = np.array(methods["gradient descent, 1 step (best lr)"]["mean"])
    assert (transformer[1:] < ridge[1:] + 0.05).all() and (transformer[1:] < 1.2 * ridge[1:]).all()
    assert (transformer[1:3] < squares[1:3] / 1.5).all() and (transformer[3:] < descent[3:]).all()
    recorded = transformer[5]
    with loaded.lock, torch.no_grad():
        family = FunctionTasks(dim=1, shots=5, queries=1, noise=0.5, seed=31_337)
        measured = evaluate_regression(
            InContext(), loaded.model, family, 300, dict(loaded.model.named_parameters()), False
        )
    assert abs(measured.mean - recorded) < 3 * measured.ci95, (measured, recorded)


def test_incontext_task_is_a_seeded_noisy_line(client):
    a = client.get("/api/incontext/task", params={"shots": 12, "seed": 9}).json()
    assert a == client.get("/api/incontext/task", params={"shots": 12, "seed": 9}).json()
    assert (
        a["support"] != client.get("/api/incontext/task", params={"shots": 12, "seed": 10}).json()["support"]
    )
    x, y = np.array(a["support"]["x"]), np.array(a["support"]["y"])
    assert x.shape == y.shape == (12,) and a["noise"] == 0.5
    assert np.abs(x).max() <= 3 and np.abs(y).max() <= 6
    task, slope = explorers.line_task(9, 12, 0.5)
    assert a["slope"] == pytest.approx(slope, abs=1e-5)
    assert np.allclose(x, task.support.x[:, 0].numpy(), atol=1e-5)
    assert 0.1 < np.std(y - slope * x) < 1.2  # labels are the line plus noise of sd 0.5
    # many seeds: slopes ~ N(0, 1), every task inside the plot
    slopes = [
        client.get("/api/incontext/task", params={"shots": 20, "seed": s}).json()["slope"] for s in range(40)
    ]
    assert 0.5 < np.std(slopes) < 1.5


def test_incontext_predict_equals_the_closed_forms_and_the_transformer(client):
    xs, ys = [-2.2, -1.0, -0.3, 0.4, 1.5], [-3.1, -1.4, 0.2, 1.1, 2.0]
    r = client.post("/api/incontext/predict", json={"x": xs, "y": ys, "points": 61})
    assert r.status_code == 200, r.text
    out = r.json()
    grid = np.linspace(-3, 3, 61)
    assert out["k"] == 5 and np.allclose(out["x"], grid, atol=1e-5)
    x, y = np.array(xs), np.array(ys)
    lr = tuned_gradient_descent(FunctionTasks(dim=1, shots=5, queries=1, noise=0.5)).lr
    slopes = {
        "least_squares": (x * y).sum() / (x * x).sum(),
        "ridge": (x * y).sum() / ((x * x).sum() + 0.25),  # penalty noise^2: the posterior mean, w ~ N(0, 1)
        "gradient_descent": lr * (x * y).sum() / 5,  # one step from w = 0 on 1/(2k) sum (w x - y)^2
    }
    for name, slope in slopes.items():
        assert out[name]["slope"] == pytest.approx(slope, abs=1e-5), name
        assert np.allclose(out[name]["y"], slope * grid, atol=2e-4), name
    assert out["ridge"]["penalty"] == 0.25 and out["gradient_descent"]["lr"] == pytest.approx(lr, abs=1e-6)
    # the transformer: InContext's adapt and predict on the shipped network, each query after all the points
    loaded = web_models().incontext
    params = dict(loaded.model.named_parameters())
    with loaded.lock, torch.no_grad():
        state = InContext().adapt(loaded.model, params, Split(torch.tensor(xs)[:, None], torch.tensor(ys)), 0)
        expected = InContext().predict(
            loaded.model, params, state, torch.tensor(grid, dtype=torch.float32)[:, None]
        )
    curve = np.array(out["transformer"]["y"])
    assert curve.shape == (61,) and np.isfinite(curve).all()
    assert np.allclose(curve, expected.numpy(), atol=2e-4)
    assert out["transformer"]["slope"] == pytest.approx(np.polyfit(grid, curve, 1)[0], abs=1e-3)


def test_incontext_with_no_points_everything_predicts_zero(client):
    out = client.post("/api/incontext/predict", json={"x": [], "y": []}).json()
    assert out["k"] == 0 and len(out["x"]) == 121
    for name in ("least_squares", "ridge", "gradient_descent"):
        assert out[name]["slope"] == 0 and not np.any(out[name]["y"]), name
    # the transformer reads the query alone: the prior mean of y, 0, where it was trained (|x| <= 2)
    curve, x = np.array(out["transformer"]["y"]), np.array(out["x"])
    assert np.abs(curve[np.abs(x) <= 2]).max() < 0.35 and np.abs(curve).max() < 0.9


def test_incontext_transformer_reads_the_slope_from_its_prompt(client):
    """Ten points on the noiseless line y = 2x: the transformer's line has slope near 2 (ridge's 1.97 with
    these points); the same points on y = -x: near -1. One point at (1, 2): it shrinks the slope as ridge does."""
    xs = np.linspace(-2, 2, 10).round(3)
    for slope in (2.0, -1.0):
        out = client.post(
            "/api/incontext/predict", json={"x": xs.tolist(), "y": (slope * xs).tolist()}
        ).json()
        assert out["least_squares"]["slope"] == pytest.approx(slope, abs=1e-5)
        assert out["transformer"]["slope"] == pytest.approx(slope, abs=0.3), out["transformer"]["slope"]
    one = client.post("/api/incontext/predict", json={"x": [1.0], "y": [2.0]}).json()
    assert one["least_squares"]["slope"] == pytest.approx(2) and one["ridge"]["slope"] == pytest.approx(1.6)
    assert 1.0 < one["transformer"]["slope"] < 1.9


def test_incontext_takes_up_to_twenty_points(client):
    xs = np.linspace(-2.5, 2.5, 20).round(3).tolist()
    out = client.post(
        "/api/incontext/predict", json={"x": xs, "y": [0.5 * x for x in xs], "points": 2}
    ).json()
    assert out["k"] == 20 and len(out["transformer"]["y"]) == 2
    r = client.post("/api/incontext/predict", json={"x": xs + [0.0], "y": [0.0] * 21})
    assert r.status_code == 422 and "at most 20" in r.json()["error"], r.text


# ----------------------------------------------------------------------------------------------------------
# bad input: 4xx with a one-line message, never a 500

GOOD_SUPPORT = {"x": [[0.0, 0.0], [1.0, 1.0]], "y": [0, 1]}
TINY_PNG = png_url(np.zeros((10, 10), dtype=np.uint8))


def big_png(w: int, h: int) -> str:
    return png_url(np.zeros((h, w), dtype=np.uint8))


BAD_REQUESTS = [
    ("get", "/api/protonet/task", {"ways": 1}),
    ("get", "/api/protonet/task", {"ways": 11}),
    ("get", "/api/protonet/task", {"shots": 0}),
    ("get", "/api/protonet/task", {"shots": 11}),
    ("get", "/api/protonet/task", {"seed": -1}),
    ("get", "/api/protonet/task", {"ways": "five"}),
    (
        "post",
        "/api/protonet/classify",
        {"ways": 2, "support": {"x": [[0.0, 0.0]] * 101, "y": [0, 1] * 50 + [0]}},
    ),
    ("post", "/api/protonet/classify", {"ways": 3, "support": GOOD_SUPPORT}),  # class 2 has no point
    ("post", "/api/protonet/classify", {"ways": 2, "support": {"x": [[0.0, 0.0]], "y": [0, 1]}}),
    ("post", "/api/protonet/classify", {"ways": 2, "support": {"x": [[0.0, 0.0], [1, 1]], "y": [0, 2]}}),
    ("post", "/api/protonet/classify", {"ways": 2, "support": {"x": [[0.0], [1.0, 1.0]], "y": [0, 1]}}),
    ("post", "/api/protonet/classify", {"ways": 2, "support": {"x": [[1e9, 0.0], [1, 1]], "y": [0, 1]}}),
    ("post", "/api/protonet/classify", {"ways": 2, "support": {"x": [["a", 0], [1, 1]], "y": [0, 1]}}),
    ("post", "/api/protonet/classify", {"ways": 2, "support": {"x": [[True, 0], [1, 1]], "y": [0, 1]}}),
    ("post", "/api/protonet/classify", {"ways": 2, "support": {"x": [[0, 0], [1, 1]], "y": [0, 1.5]}}),
    ("post", "/api/protonet/classify", {"ways": 2.0, "support": GOOD_SUPPORT}),
    ("post", "/api/protonet/classify", {"ways": 2, "support": GOOD_SUPPORT, "bounds": [1, -1, 0, 1]}),
    ("post", "/api/protonet/classify", {"ways": 2, "support": GOOD_SUPPORT, "bounds": [1, 2, 3]}),
    ("post", "/api/protonet/classify", {"ways": 2, "support": GOOD_SUPPORT, "resolution": 5000}),
    ("post", "/api/protonet/classify", {"ways": 2, "support": GOOD_SUPPORT, "points": [[0, 0]] * 1001}),
    ("post", "/api/protonet/classify", {"ways": 2, "support": GOOD_SUPPORT, "typo": 1}),
    ("post", "/api/protonet/classify", {"support": GOOD_SUPPORT}),
    ("post", "/api/protonet/classify", [1, 2, 3]),
    ("get", "/api/maml/task", {"shots": 0}),
    ("get", "/api/maml/task", {"shots": 51}),
    ("get", "/api/maml/task", {"points": 100000}),
    ("post", "/api/maml/adapt", {"x": [], "y": []}),
    ("post", "/api/maml/adapt", {"x": [0.0] * 101, "y": [0.0] * 101}),
    ("post", "/api/maml/adapt", {"x": [0.0, 1.0], "y": [0.0]}),
    ("post", "/api/maml/adapt", {"x": [6.0], "y": [0.0]}),
    ("post", "/api/maml/adapt", {"x": [0.0], "y": [11.0]}),
    ("post", "/api/maml/adapt", {"x": [0.0], "y": [0.0], "steps": 11}),
    ("post", "/api/maml/adapt", {"x": [0.0], "y": [0.0], "steps": -1}),
    ("post", "/api/maml/adapt", {"x": [0.0], "y": [0.0], "steps": "3"}),
    ("post", "/api/maml/adapt", {"x": [0.0], "y": [0.0], "truth": {"amplitude": -1, "phase": 0}}),
    ("post", "/api/maml/adapt", {"x": [0.0], "y": [0.0], "truth": {"amplitude": 1}}),
    ("post", "/api/maml/adapt", {"x": [None], "y": [0.0]}),
    ("post", "/api/maml/np", {"x": [0.0] * 101, "y": [0.0] * 101}),
    ("post", "/api/maml/np", {"x": [0.0, 1.0], "y": [0.0]}),
    ("post", "/api/maml/np", {"x": [], "y": [0.0]}),
    ("post", "/api/maml/np", {"x": [-5.5], "y": [0.0]}),
    ("post", "/api/maml/np", {"x": [0.0], "y": [10.5]}),
    ("post", "/api/maml/np", {"x": [0.0], "y": [0.0], "points": 1}),
    ("post", "/api/maml/np", {"x": [0.0], "y": [0.0], "points": 501}),
    ("post", "/api/maml/np", {"x": [0.0], "y": [0.0], "steps": 3}),  # MAML's field: not the neural process's
    ("post", "/api/maml/np", {"x": [True], "y": [0.0]}),
    ("post", "/api/maml/np", {"x": ["0.5"], "y": [0.0]}),
    ("post", "/api/maml/np", {"x": [0.0]}),
    ("post", "/api/maml/np", {"x": [0.0], "y": [0.0], "truth": {"amplitude": 11, "phase": 0}}),
    ("post", "/api/maml/np", {"x": 0.0, "y": 0.0}),
    ("get", "/api/incontext/task", {"shots": 0}),
    ("get", "/api/incontext/task", {"shots": 21}),
    ("get", "/api/incontext/task", {"seed": -1}),
    ("post", "/api/incontext/predict", {"x": [0.0] * 21, "y": [0.0] * 21}),
    ("post", "/api/incontext/predict", {"x": [0.0, 1.0], "y": [0.0]}),
    ("post", "/api/incontext/predict", {"x": [3.5], "y": [0.0]}),
    ("post", "/api/incontext/predict", {"x": [0.0], "y": [-11.0]}),
    ("post", "/api/incontext/predict", {"x": [0.0], "y": [0.0], "points": 1}),
    ("post", "/api/incontext/predict", {"x": ["1"], "y": [0.0]}),
    ("post", "/api/incontext/predict", {"x": [0.0]}),
    ("post", "/api/incontext/predict", {"x": [0.0], "y": [0.0], "noise": 1}),
    ("get", "/api/omniglot/support", {"ways": 1}),
    ("get", "/api/omniglot/support", {"ways": 11}),
    ("get", "/api/omniglot/support", {"seed": 2**40}),
    ("post", "/api/omniglot/classify", {"ways": 5}),  # neither image nor pixels
    ("post", "/api/omniglot/classify", {"image": TINY_PNG, "pixels": [[0] * 28] * 28}),
    ("post", "/api/omniglot/classify", {"image": "hello"}),
    ("post", "/api/omniglot/classify", {"image": "data:image/jpeg;base64,AAAA"}),
    ("post", "/api/omniglot/classify", {"image": "data:image/png;base64,%%%%"}),
    ("post", "/api/omniglot/classify", {"image": "data:image/png;base64,AAA"}),  # bad padding
    (
        "post",
        "/api/omniglot/classify",
        {"image": "data:image/png;base64," + base64.b64encode(b"GIF89a...").decode()},
    ),
    ("post", "/api/omniglot/classify", {"image": TINY_PNG[:60]}),  # a cut data URL
    (
        "post",
        "/api/omniglot/classify",
        {"image": TINY_PNG[:22] + base64.b64encode(base64.b64decode(TINY_PNG[22:])[:40]).decode()},
    ),  # a truncated PNG file
    ("post", "/api/omniglot/classify", {"image": big_png(2000, 10)}),
    ("post", "/api/omniglot/classify", {"image": TINY_PNG}),  # all black: nothing drawn
    ("post", "/api/omniglot/classify", {"image": TINY_PNG, "ways": 11}),
    ("post", "/api/omniglot/classify", {"image": 12}),
    ("post", "/api/omniglot/classify", {"pixels": [[0] * 20] * 20}),
    ("post", "/api/omniglot/classify", {"pixels": [[0] * 28] * 27}),
    ("post", "/api/omniglot/classify", {"pixels": [[0] * 28] * 27 + [[0] * 27]}),
    ("post", "/api/omniglot/classify", {"pixels": [[300] * 28] * 28}),
    ("post", "/api/omniglot/classify", {"pixels": [["x"] * 28] * 28}),
    ("post", "/api/omniglot/classify", {"pixels": [[0] * 200] * 200}),
    ("post", "/api/omniglot/classify", {"pixels": [[0] * 28] * 28}),  # empty drawing
]


@pytest.mark.parametrize(
    "method, path, payload", BAD_REQUESTS, ids=[f"{i}-{r[1]}" for i, r in enumerate(BAD_REQUESTS)]
)
def test_bad_input_gets_4xx_with_a_message(client, method, path, payload):
    if method == "get":
        r = client.get(path, params=payload)
    else:
        r = client.post(path, json=payload)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    message = r.json()["error"]
    assert isinstance(message, str) and message and "\n" not in message and len(message) < 300


def test_malformed_bodies_get_4xx(client):
    cases = [
        b'{"x": [NaN], "y": [0.0]}',  # Python's JSON parser reads NaN and Infinity: refused by validation
        b'{"x": [0.0], "y": [Infinity]}',
        b'{"x": [0.0], "y": [0.0], "steps": 1',  # cut short
        b"not json at all",
        b"",
    ]
    for body in cases:
        r = client.post("/api/maml/adapt", content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500 and r.json()["error"], body
    r = client.post(
        "/api/maml/adapt", content=b'{"x": [0.0], "y": [0.0]}', headers={"content-type": "text/plain"}
    )
    assert 400 <= r.status_code < 500
    huge = b'{"image": "' + b"A" * 6_000_000 + b'"}'
    r = client.post("/api/omniglot/classify", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    chunks = (b"A" * 1_000_000 for _ in range(6))  # no Content-Length: counted as it arrives
    r = client.post("/api/omniglot/classify", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.post("/api/maml/adapt", content=iter([b'{"x": [0.5], ', b'"y": [1.0], "steps": 2}']),
                    headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 200 and len(r.json()["maml"]["curves"]) == 3


def test_a_body_that_is_not_json_is_named_in_words_with_line_and_column(client):
    cases = [
        (b"not json at all", "Expecting value at line 1, column 1"),
        (b'{"x": [0.0],\n "y": [0.0],,}', "at line 2, column 13"),
        (b'{"x": [0.0], "y": [0.0], "steps": 1', "at line 1, column 36"),
        (b'{"x": [0.0], "y": [0.0]} extra', "Extra data at line 1, column 26"),
    ]
    for path in ("/api/protonet/classify", "/api/maml/adapt", "/api/omniglot/classify"):
        for body, where in cases:
            r = client.post(path, content=body, headers={"content-type": "application/json"})
            message = r.json()["error"]
            assert r.status_code == 422 and "\n" not in message, (path, body, message)
            assert message.startswith("the request body is not valid JSON: ") and where in message, message
    answers = {
        b"": "the request body is empty",
        b"[1, 2, 3]": "must be a JSON object ({...} of named fields), not a list",
        b'"text"': "not a string",
        b'{"image": "\xff"}': "the request body is not UTF-8 text (byte 11)",
    }
    for body, words in answers.items():
        r = client.post("/api/omniglot/classify", content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500 and words in r.json()["error"], (body, r.text[:300])


def test_every_post_endpoint_refuses_a_body_not_sent_as_json(client):
    posts = [r.path for r in client.app.routes if "POST" in getattr(r, "methods", ())]
    assert sorted(posts) == [
        "/api/incontext/predict", "/api/maml/adapt", "/api/maml/np", "/api/omniglot/classify",
        "/api/protonet/classify",
    ]  # fmt: skip
    body = b'{"x": [0.0], "y": [0.0]}'  # valid JSON: refused for its content type, whatever it holds
    for path in posts:
        for content_type in (
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            None,
        ):
            headers = {"content-type": content_type} if content_type else {}
            r = client.post(path, content=body, headers=headers)
            message = r.json()["error"]
            assert r.status_code == 415 and "\n" not in message, (path, content_type, r.text[:300])
            assert "Content-Type: application/json" in message, message
            assert (content_type or "no Content-Type header") in message, message
        for content_type in ("application/json; charset=utf-8", "application/problem+json"):
            r = client.post(path, content=body, headers={"content-type": content_type})
            assert r.status_code != 415, (path, content_type)
    r = client.post(
        "/api/maml/adapt", content=body, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert r.status_code == 200


def test_random_junk_never_gets_a_500(client):
    """Seeded random bodies (wrong types, extremes, nesting) at every POST endpoint: always a 4xx or a 200."""
    rng = np.random.default_rng(0)
    atoms = [None, True, 0, -1, 1e308, -1e308, 3.5, "", "x", [], {}, [[1, 2]], [0.0] * 3, 2**70]

    def junk(depth: int = 0):
        kind = rng.integers(4 if depth < 2 else 1)
        if kind == 0:
            return atoms[rng.integers(len(atoms))]
        if kind == 1:
            return [junk(depth + 1) for _ in range(rng.integers(4))]
        keys = ["ways", "support", "x", "y", "points", "steps", "truth", "image", "pixels", "seed", "bounds"]
        return {keys[rng.integers(len(keys))]: junk(depth + 1) for _ in range(rng.integers(4))}

    for path in (
        "/api/protonet/classify",
        "/api/maml/adapt",
        "/api/maml/np",
        "/api/omniglot/classify",
        "/api/incontext/predict",
    ):
        for _ in range(60):
            r = client.post(path, json=junk())
            assert r.status_code < 500, (path, r.text[:300])


# ----------------------------------------------------------------------------------------------------------
# concurrency, and the models stay untouched


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server():
    """A real uvicorn server on 127.0.0.1 (a random free port) in a background thread."""
    with running(create_app()) as url:
        yield url


def test_concurrent_requests_give_the_sequential_answers(live_server, test_split):
    """24 requests at once (MAML adaptations of different support sets, Omniglot drawings, ProtoNet tasks,
    in-context prompts, neural-process curves) give exactly the answers they give one at a time: requests never
    see each other's weights."""
    import httpx

    canvas = [png_url(as_canvas(test_split.images[i, 0].numpy())) for i in (5, 400, 900, 1300)]
    requests = []
    for i in range(16):
        if i % 3 == 0:
            xs = np.linspace(-4.5, 4.5, 3 + i).round(3).tolist()
            requests.append(
                ("/api/maml/adapt", {"x": xs, "y": [float(np.sin(x + i)) * (1 + i % 4) for x in xs]})
            )
        elif i % 3 == 1:
            requests.append(
                ("/api/omniglot/classify", {"ways": 5 + i % 5, "seed": i, "image": canvas[i % 4]})
            )
        else:
            task = explorers.GaussianClusters(2 + i % 9, 1 + i % 10, 0, i).task()
            support = {"x": task.support.x.tolist(), "y": task.support.y.tolist()}
            requests.append(
                ("/api/protonet/classify", {"ways": task.ways, "support": support, "points": [[i / 4, 0.5]]})
            )
    for i in range(4):  # the in-context transformer: 0, 5, 10 and 15 points
        xs = np.linspace(-2.5, 2.5, 5 * i).round(3).tolist()
        requests.append(("/api/incontext/predict", {"x": xs, "y": [(i - 1.5) * x + 0.3 for x in xs]}))
    for i in range(4):  # the neural process: 0, 4, 8 and 12 points
        xs = np.linspace(-4.5, 4.5, 4 * i).round(3).tolist()
        requests.append(("/api/maml/np", {"x": xs, "y": [float(np.sin(x - i)) * (1 + i) for x in xs]}))
    with httpx.Client(base_url=live_server, timeout=60) as http:
        sequential = [http.post(path, json=body).json() for path, body in requests]
        barrier = threading.Barrier(len(requests))

        def send(i: int) -> dict:
            barrier.wait()  # all 24 leave together
            r = http.post(requests[i][0], json=requests[i][1])
            assert r.status_code == 200, r.text
            return r.json()

        for _ in range(2):
            with ThreadPoolExecutor(len(requests)) as pool:
                parallel = list(pool.map(send, range(len(requests))))
            assert parallel == sequential


def test_requests_leave_the_shipped_weights_unchanged(client):
    from fewshot import io as fio

    before = {k: v.clone() for k, v in web_models().maml.model.state_dict().items()}
    client.post("/api/maml/adapt", json={"x": [0.0, 1.0], "y": [3.0, -3.0], "steps": 10})
    for k, v in web_models().maml.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(
        torch.equal(web_models().maml.model.state_dict()[k], v)
        for k, v in fio.load_tensors(MAML_FILE).items()
    )
    stored = fio.load_tensors(OMNIGLOT_FILE)
    assert all(torch.equal(web_models().protonet.model.state_dict()[k], v) for k, v in stored.items())
    assert not web_models().protonet.model.training
    incontext = web_models().incontext.model
    client.post("/api/incontext/predict", json={"x": [0.0, 1.0], "y": [3.0, -3.0]})
    stored = fio.load_tensors(INCONTEXT_FILE)  # float16 on disk, read into the float32 network exactly
    assert all(torch.equal(incontext.state_dict()[k], v.float()) for k, v in stored.items())
    assert not incontext.training
    anp = web_models().anp.model
    client.post("/api/maml/np", json={"x": [0.0, 1.0], "y": [3.0, -3.0]})
    stored = fio.load_tensors(ANP_FILE)  # float16 on disk too
    assert all(torch.equal(anp.state_dict()[k], v.float()) for k, v in stored.items())
    assert not anp.training


# ----------------------------------------------------------------------------------------------------------
# the command


def test_serve_without_the_web_extra_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` now raises ImportError
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'fewshot[web]'" in err


def test_serve_refuses_bad_ports(capsys):
    for port in ("0", "70000", "http"):
        assert main(["serve", "--port", port]) == 2
        err = capsys.readouterr().err
        assert "port number from 1 to 65535" in err and len(err.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
        assert "choose another --port" in capsys.readouterr().err


def test_check_host_names_the_host_and_what_to_give():
    from fewshot.web.server import check_host

    for good in ("127.0.0.1", "localhost", "0.0.0.0"):
        check_host(good)
    for bad, words in [
        ("256.1.1.1", "is not a valid IPv4 address"),  # refused without asking DNS
        ("1.2.3.4.5", "is not a valid IPv4 address"),
        ("no-such-host.invalid", "is not an IPv4 address or a name that resolves to one"),
        ("a..b", "is not an IPv4 address or a name"),
        ("::g", "is not an IPv6 address"),
        ("192.0.2.1", "is not an address of this machine"),  # TEST-NET-1: never a local address
        ("", "the host is empty"),
    ]:
        with pytest.raises(ValueError) as e:
            check_host(bad)
        message = str(e.value)
        assert (f"host {bad} " in message if bad else words in message) and words in message, message
        assert "e.g. 127.0.0.1" in message and "port" not in message and "\n" not in message, message


def test_fewshot_serve_prints_its_address_and_serves():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fewshot.cli", "serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        assert line.startswith(f"fewshot: explorers at http://127.0.0.1:{port}/"), (
            line + process.stderr.read()
        )
        import httpx

        for _ in range(100):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/maml", timeout=5)
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert r.status_code == 200 and "MAML" in r.text
        task = httpx.get(f"http://127.0.0.1:{port}/api/protonet/task", params={"ways": 3}, timeout=5).json()
        assert task["ways"] == 3
    finally:
        process.terminate()
        process.wait(10)
