"""LEO (Rusu et al. 2019): the inner loop moves the latent codes only, one step matches a hand computation,
the meta-gradient matches finite differences, and it trains through the command line on tables and on images
embedded by a frozen baseline run."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import write_image_folder
from fewshot.algorithms import leo
from fewshot.algorithms.base import parameters_of
from fewshot.algorithms.leo import LEO, LEOModel, class_mean
from fewshot.cli import main
from fewshot.models import Conv4, ModelRequest
from fewshot.tasks.episodes import Split, Task

WAYS, SHOTS, D, L = 3, 2, 5, 3


def setup(seed: int = 0) -> tuple[LEOModel, dict[str, torch.Tensor], Task]:
    """A float64 LEO model on 5 features (latent size 3), random step sizes, and a 3-way 2-shot task."""
    torch.manual_seed(seed)
    model = LEOModel(D, L, inner_lr=1.0, finetune_lr=0.1).double()
    with torch.no_grad():
        model.inner_lr.uniform_(0.3, 1.2)  # a different step size per latent dimension
        model.finetune_lr.uniform_(0.05, 0.3)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(WAYS).repeat_interleave(SHOTS)
    task = Task(
        Split(torch.randn(WAYS * SHOTS, D, generator=g, dtype=torch.float64), y),
        Split(
            torch.randn(WAYS * 3, D, generator=g, dtype=torch.float64),
            torch.arange(WAYS).repeat_interleave(3),
        ),
        WAYS,
    )
    return model, parameters_of(model), task


def test_inner_loop_changes_only_the_latent_codes(one_thread):
    model, params, task = setup()
    before = {k: v.detach().clone() for k, v in params.items()}
    algo = LEO(inner_steps=3, finetune_steps=0)
    f = algo.features(model, params, task.support.x)
    f_before = f.clone()
    z0, _ = algo.encode(model, params, f, task.support.y, WAYS)
    z, w = algo.inner_loop(model, params, f, task.support.y, WAYS, z0)
    assert all(torch.equal(params[k], v) for k, v in before.items())  # nothing learned in the inner loop
    assert torch.equal(f, f_before)
    assert (z - z0).abs().max() > 1e-3  # the codes moved
    d_mean = params["decoder.weight"][:D]  # (d, L): the weights' means
    torch.testing.assert_close(
        w, z @ d_mean.T, rtol=0, atol=1e-12
    )  # the weights are the codes' decoding only
    state = algo.adapt(model, params, task.support, WAYS)
    torch.testing.assert_close(state, class_mean(w, task.support.y, WAYS), rtol=0, atol=1e-12)


def test_decoding_and_one_step_on_the_codes_match_a_hand_computation(one_thread):
    model, params, task = setup(1)
    x, y = task.support.x, task.support.y
    g = torch.Generator().manual_seed(5)
    z0 = torch.randn(
        WAYS * SHOTS, L, generator=g, dtype=torch.float64
    )  # the encoder's output, given directly
    algo = LEO(inner_steps=1, finetune_steps=0, normalize=False)
    dec = params["decoder.weight"].detach()  # (2d, L): rows 0..d-1 give means, d..2d-1 raw deviations
    d_mean, d_raw = dec[:D], dec[D:]
    # decoding: means z D_mean^T; with noise eps, + max(exp(z D_raw^T) - 1 + sqrt(2 / (d + ways)), 1e-10) eps
    eps = torch.randn(WAYS * SHOTS, D, generator=g, dtype=torch.float64)
    std = (torch.exp(z0 @ d_raw.T) - 1 + math.sqrt(2 / (D + WAYS))).clamp_min(1e-10)
    torch.testing.assert_close(algo.decode(model, params, z0, WAYS), z0 @ d_mean.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        algo.decode(model, params, z0, WAYS, eps), z0 @ d_mean.T + std * eps, rtol=0, atol=1e-12
    )
    # one step on the summed support cross-entropy: A (ways, n) averages each class's rows, Y one-hot labels
    A = F.one_hot(y, WAYS).double().T / SHOTS
    Y = F.one_hot(y, WAYS).double()
    W = A @ (z0 @ d_mean.T)  # (ways, d): the classifier
    P = torch.softmax(x @ W.T, dim=1)  # (n, ways)
    grad_z = A.T @ (P - Y).T @ x @ d_mean  # dL/dS = P - Y; S = x W^T; W = A Z D_mean^T
    expected = z0 - params["inner_lr"].detach() * grad_z
    z1, w1 = algo.inner_loop(model, params, x, y, WAYS, z0)
    torch.testing.assert_close(z1, expected, rtol=0, atol=1e-10)
    # and one finetuning step on the decoded weights: w - lr_w * A^T (P - Y)^T x
    algo = LEO(inner_steps=1, finetune_steps=1, normalize=False)
    w0 = z1 @ d_mean.T
    P = torch.softmax(x @ (A @ w0).T, dim=1)
    _, w2 = algo.inner_loop(model, params, x, y, WAYS, z0)
    torch.testing.assert_close(
        w2, w0 - params["finetune_lr"].detach() * (A.T @ (P - Y).T @ x), rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("step", [None, 7], ids=["zero-noise", "seeded-noise"])
def test_meta_gradient_matches_finite_differences(step, one_thread):
    model, params, task = setup(2)
    # encoder_penalty 0: its stop-gradient on the adapted codes makes its gradient differ from the derivative
    algo = LEO(inner_steps=2, finetune_steps=2, kl_weight=0.1, encoder_penalty=0.0, orthogonality_penalty=0.1,
               l2_penalty=0.01, dropout=0.3, training=True)  # fmt: skip
    algo = algo.at_step(step) if step is not None else algo  # a step's noise is a pure function of the step

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return algo.task_loss(model, p, task)[0]

    grads = torch.autograd.grad(loss(params), [params["encoder.weight"], params["inner_lr"]])
    for name, grad in zip(["encoder.weight", "inner_lr"], grads, strict=True):
        numeric = torch.zeros_like(grad)
        base = params[name].detach()
        for i in range(base.numel()):
            e = torch.zeros_like(base).view(-1)
            e[i] = 1e-6
            e = e.view_as(base)
            with torch.no_grad():
                up, down = loss(params | {name: base + e}), loss(params | {name: base - e})
            numeric.view(-1)[i] = (up - down) / 2e-6
        torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-8, msg=name)


def test_noise_is_seeded_by_step_and_task_and_off_at_test(one_thread):
    model, params, task = setup(3)
    algo = leo.build(leo.LEOSettings(latent_dim=L), testing=False)
    loss, outs = algo.at_step(4).batch_loss(model, params, [task, task])
    again, _ = algo.at_step(4).batch_loss(model, params, [task, task])
    assert torch.equal(loss, again)  # reproducible: no global RNG
    assert not torch.allclose(outs[0], outs[1])  # each task of a step draws its own noise
    assert not torch.allclose(algo.at_step(5).task_loss(model, params, task)[0], loss)
    test = leo.build(leo.LEOSettings(latent_dim=L), testing=True).at_step(4)
    assert torch.equal(test.task_loss(model, params, task)[1], LEO().task_loss(model, params, task)[1])


def test_images_without_an_embedding_are_refused_in_one_line(tmp_path, capsys, one_thread):
    with pytest.raises(ValueError, match=r"pass --embedding RUN"):
        leo.SPEC.model(ModelRequest("images"), leo.LEOSettings())
    root = write_image_folder(tmp_path / "img", classes=9, per_class=4)
    argv = ["train", "--algorithm", "leo", "--dataset", "folder", "--data-root", str(root), "--ways", "3",
            "--shots", "1", "--queries", "1", "--steps", "1", "--val-every", "0", "--quiet",
            "--run-dir", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--embedding RUN" in err and len(err.splitlines()) == 1


def test_learns_separable_table_through_the_cli(tmp_path, one_thread):
    g = np.random.default_rng(0)
    centres = g.normal(size=(20, 8))
    x = np.concatenate([c + 0.15 * g.normal(size=(12, 8)) for c in centres]).astype(np.float32)
    np.savez(tmp_path / "t.npz", x=x, y=np.repeat(np.arange(20), 12))
    # one small step on the codes only: what it reaches on new classes is what meta-training taught it
    argv = ["train", "--algorithm", "leo", "--dataset", "table", "--data-root", str(tmp_path / "t.npz"),
            "--ways", "3", "--shots", "2", "--queries", "3", "--tasks-per-step", "2", "--latent-dim", "8",
            "--inner-steps", "1", "--finetune-steps", "0", "--inner-lr", "0.01", "--outer-lr", "0.01",
            "--val-every", "0", "--log-every", "20", "--test-episodes", "0", "--quiet"]  # fmt: skip
    accuracy = {}
    for steps in (1, 60):
        run = tmp_path / f"run{steps}"
        assert main([*argv, "--steps", str(steps), "--run-dir", str(run)]) == 0
        assert json.loads((run / "config.json").read_text())["config"]["route"] == "autograd"
        assert main(["eval", str(run), "--ways", "3", "--shots", "2", "--queries", "5", "--episodes", "30",
                     "--quiet"]) == 0  # fmt: skip
        accuracy[steps] = json.loads((run / "eval.json").read_text())[-1]["results"][0]["mean"]
    assert accuracy[1] < 0.6 and accuracy[60] > 0.85, accuracy  # chance: 1/3


def test_trains_on_images_through_a_frozen_baseline_embedding(tmp_path, one_thread):
    root = write_image_folder(tmp_path / "img", classes=15, per_class=5)
    data = ["--dataset", "folder", "--data-root", str(root), "--hidden", "8", "--quiet", "--val-every", "0"]
    base, run = tmp_path / "base", tmp_path / "leo"
    assert main(["train", "--algorithm", "baseline", *data, "--steps", "3", "--batch-size", "8",
                 "--test-episodes", "0", "--run-dir", str(base)]) == 0  # fmt: skip
    own = ["--embedding", str(base), "--ways", "3", "--shots", "1", "--queries", "2", "--steps", "3",
           "--latent-dim", "4", "--test-episodes", "2", "--test-shots", "1", "--test-ways", "3",
           "--test-queries", "2"]  # fmt: skip
    assert main(["train", "--algorithm", "leo", *data, *own, "--run-dir", str(run)]) == 0
    backbone, saved = load_file(str(base / "model.safetensors")), load_file(str(run / "model.safetensors"))
    frozen = {k[len("embedding.") :]: v for k, v in saved.items() if k.startswith("embedding.")}
    assert frozen and all(torch.equal(frozen[k], backbone[k]) for k in backbone)  # saved, and not trained
    assert {"encoder.weight", "relation.0.weight", "decoder.weight", "inner_lr", "finetune_lr"} <= set(saved)
    assert main(["eval", str(run), "--ways", "3", "--shots", "1", "--episodes", "2", "--quiet"]) == 0


def test_images_keep_every_tensor_on_the_model_device(one_thread):
    """test_devices.py's check for LEO on images, with a frozen conv4 built on the meta device."""
    from fewshot import devices
    from test_devices import META, CpuCreations, cpu_task, tensors_in

    with torch.device(META):
        model = LEOModel(8, 4, 1.0, 1e-3, Conv4(1, 8))
    task = devices.move_task(cpu_task("images"), META)
    drawing = set()  # the lines of the functions that draw noise and dropout masks
    for fn in (leo._normal, leo._drop):
        lines, start = inspect.getsourcelines(fn)
        drawing |= set(range(start, start + len(lines)))
    for testing in (False, True):
        algorithm = leo.build(leo.LEOSettings(latent_dim=4, finetune_steps=2), testing)
        with CpuCreations() as mode:
            params = parameters_of(model)
            state = algorithm.adapt(model, params, task.support, task.ways)
            outputs = algorithm.predict(model, params, state, task.query.x)
            loss, logits = algorithm.task_loss(model, params, task)
            loss_b, outs = algorithm.at_step(3).batch_loss(model, params, [task, task])
        # training draws its noise and dropout masks on the CPU (seeded generators), then moves them
        assert all(int(f.rsplit(":", 1)[1]) in drawing for f in mode.found) and (not mode.found) == testing
        found = tensors_in(params, state, outputs, loss, logits, loss_b, outs)
        assert found and all(t.device == META for t in found)
        assert logits.shape == outputs.shape == (task.query.x.shape[0], task.ways)
        assert not any(k.startswith("embedding.") for k in params)  # frozen: not a meta-parameter
