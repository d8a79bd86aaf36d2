"""ResNet-12: shapes, memory formats, bf16, DropBlock's statistics, exact second-order MAML through it, and its
wiring into every algorithm's configuration."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.algorithms.base import parameters_of, task_loss
from fewshot.algorithms.maml import MAML
from fewshot.algorithms.routes import meta_gradient, task_at
from fewshot.config import TrainConfig
from fewshot.models import BatchNorm2d, DropBlock, ModelRequest, ResNet12, standard_network
from fewshot.models.resnet12 import resnet12_widths
from fewshot.models.standard import embedding_features
from fewshot.tasks.episodes import Split, Task, stack_tasks
from test_maml import flat, unflat

TINY = (4, 4, 4, 4)  # widths for the properties that do not depend on size


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small networks: one thread is faster here, and two slow down ~100x when another process takes a core."""


def image_tasks(n=3, ways=2, shots=1, queries=2, size=16, channels=3, dtype=torch.float64) -> Task:
    g = torch.Generator().manual_seed(0)
    tasks = []
    for _ in range(n):
        xs = torch.randn(ways * shots, channels, size, size, generator=g, dtype=dtype)
        xq = torch.randn(ways * queries, channels, size, size, generator=g, dtype=dtype)
        ys, yq = torch.arange(ways).repeat_interleave(shots), torch.arange(ways).repeat_interleave(queries)
        tasks.append(Task(Split(xs, ys), Split(xq, yq), ways))
    return stack_tasks(tasks)


def tiny_maml_net(dtype=torch.float64, ways=2) -> nn.Module:
    torch.manual_seed(0)
    return ResNet12(3, ways, track_running_stats=False, widths=TINY).to(dtype)


def test_shapes_for_several_image_sizes_with_and_without_a_head():
    torch.manual_seed(0)
    model = ResNet12().eval()  # the literature's 64-160-320-640
    assert model.embedding_dim == 640
    weights = sum(p.numel() for p in model.parameters())
    assert weights == 12_424_320  # MetaOptNet's 12.4 M; counted by hand from the layers
    with torch.no_grad():
        for side in (84, 32):
            assert model(torch.randn(2, 3, side, side)).shape == (2, 640)
        small = ResNet12(1, 5, widths=(8, 20, 40, 80)).eval()
        for h, w in ((16, 16), (28, 28), (21, 40)):
            x = torch.randn(3, 1, h, w)
            assert small(x).shape == (3, 5) and small(x, features=True).shape == (3, 80)
        cosine = ResNet12(1, 4, widths=TINY, cosine_head=True).eval()
        assert cosine(torch.randn(2, 1, 16, 16)).abs().max() <= 10.0 + 1e-5  # scale * cos
    with pytest.raises(ValueError, match="at least 16x16"):
        small(torch.randn(2, 1, 15, 32))
    with pytest.raises(ValueError, match="four widths"):
        ResNet12(widths=(64, 160, 320))
    assert resnet12_widths(64) == (64, 160, 320, 640) and resnet12_widths(8) == (8, 20, 40, 80)


def test_the_block_is_the_papers_conv_bn_leaky_relu_with_the_shortcut_before_the_last_activation():
    """The block against a direct transcription of Lee et al.'s BasicBlock (activation before pooling)."""
    torch.manual_seed(0)
    block = ResNet12(3, widths=(6, 6, 6, 6)).encoder[0].train()
    x = torch.randn(4, 3, 10, 10)

    def reference(x):
        act = lambda t: F.leaky_relu(t, 0.1)  # noqa: E731
        out = act(block.bn1(block.conv1(x)))
        out = act(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out)) + block.shortcut[1](block.shortcut[0](x))
        return F.max_pool2d(act(out), 2)

    stats = {k: v.clone() for k, v in block.state_dict().items()}
    expected = reference(x)
    block.load_state_dict(stats)  # the reference's pass updated the running statistics: start again
    assert torch.equal(block(x), expected)
    assert all(m.bias is None for m in block.modules() if isinstance(m, nn.Conv2d))
    assert all(isinstance(m, BatchNorm2d) for m in block.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("drop_rate", [0.0, 0.2])
def test_channels_last_gives_the_values_and_gradients_of_the_default_layout(drop_rate):
    torch.manual_seed(0)
    a = ResNet12(3, 5, widths=(8, 16, 16, 32), drop_rate=drop_rate)
    b = ResNet12(3, 5, widths=(8, 16, 16, 32), drop_rate=drop_rate).to(memory_format=torch.channels_last)
    b.load_state_dict(a.state_dict())
    x = torch.randn(6, 3, 32, 32)

    def outputs(model, x):
        torch.manual_seed(1)  # the same DropBlock masks for both
        return model(x)

    torch.testing.assert_close(outputs(b, x.contiguous(memory_format=torch.channels_last)), outputs(a, x),
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    # gradients in float64, where the two layouts' different summation orders leave no visible rounding (in
    # float32 the first block's BatchNorm backward, a difference of nearly equal sums, amplifies it to ~1e-3)
    a, b, x = a.double(), b.double(), x.double()
    outputs(a, x).square().sum().backward()
    outputs(b, x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-10, atol=1e-12, msg=name)
    # and the layout is kept to the end (a switch back to the default layout would slow every later layer)
    with torch.no_grad():
        maps = b.encoder(x.contiguous(memory_format=torch.channels_last))
    assert maps.is_contiguous(memory_format=torch.channels_last) and not maps.is_contiguous()


def test_bf16_autocast_runs_and_stays_close_to_float32():
    torch.manual_seed(0)
    model = ResNet12(3, 5, widths=(8, 16, 16, 32)).to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y32 = model(x, features=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = model(x, features=True)
        logits = model(x)
    assert y16.dtype == torch.bfloat16 and logits.dtype == torch.bfloat16
    assert ((y16.float() - y32).norm() / y32.norm()).item() < 0.03  # 8-bit mantissas: about 1% here
    logits.float().logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_dropblock_is_the_identity_in_eval_and_when_off():
    x = torch.randn(2, 3, 9, 9)
    assert torch.equal(DropBlock(0.3).eval()(x), x)
    assert torch.equal(DropBlock(0.0).train()(x), x)
    model = ResNet12(3, widths=TINY, drop_rate=0.3).eval()
    plain = ResNet12(3, widths=TINY)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(model(x), plain.eval()(x))
    with pytest.raises(ValueError, match="below 1"):
        DropBlock(1.0)


def expected_dropped_fraction(rate: float, b: int, h: int, w: int) -> float:
    """The exact mean fraction of units in at least one dropped block, with corners drawn at Ghiasi et al.'s
    gamma: a unit in row i is covered by corners in rows max(0, i - b + 1)..min(i, h - b)."""
    gamma = rate / b**2 * h * w / ((h - b + 1) * (w - b + 1))
    rows = [min(i, h - b) - max(0, i - b + 1) + 1 for i in range(h)]
    cols = [min(j, w - b) - max(0, j - b + 1) + 1 for j in range(w)]
    return sum(1 - (1 - gamma) ** (r * c) for r in rows for c in cols) / (h * w)


def test_dropblock_zeroes_about_the_configured_fraction_in_whole_squares():
    rate, b, h, w = 0.1, 5, 20, 20
    torch.manual_seed(0)
    x = torch.ones(64, 32, h, w)
    y = DropBlock(rate, b).train()(x)
    dropped = y == 0
    fraction = dropped.float().mean().item()
    # Ghiasi et al.'s gamma aims at `rate` (overlaps and the border make it a little less); here its exact value
    exact = expected_dropped_fraction(rate, b, h, w)
    assert abs(exact - rate) < 0.02
    assert abs(fraction - exact) < 0.005, (fraction, exact)  # 819,200 units: the std of the mean is ~1e-3
    # kept units are scaled by all / kept, so the total is unchanged
    kept = y[~dropped]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - fraction)))
    assert abs(y.sum().item() / x.numel() - 1) < 1e-5
    # every dropped unit lies in a b x b square of dropped units inside the map: blocks, not scattered units
    square = F.avg_pool2d(dropped.float(), b, stride=1) == 1  # (.., h - b + 1, w - b + 1): top-left corners
    covered = F.max_pool2d(F.pad(square.float(), (b - 1,) * 4), b, stride=1).bool()
    assert torch.equal(covered, dropped)
    # ... and the masks differ between channels and examples
    assert not torch.equal(dropped[0, 0], dropped[0, 1]) and not torch.equal(dropped[0, 0], dropped[1, 0])


def test_dropblock_on_a_map_smaller_than_the_block_drops_whole_maps():
    torch.manual_seed(0)
    y = DropBlock(0.25, 5).train()(torch.ones(400, 16, 3, 3))
    per_map = (y == 0).flatten(2).float().mean(-1)  # (400, 16)
    assert set(per_map.unique().tolist()) == {0.0, 1.0}
    assert abs(per_map.mean().item() - 0.25) < 0.02  # 6,400 maps: std ~0.005


def test_dropblock_draws_follow_the_global_seed_and_only_the_last_two_blocks_drop():
    model = ResNet12(3, widths=TINY, drop_rate=0.2)
    assert [type(block.dropblock).__name__ for block in model.encoder] == ["Identity"] * 2 + ["DropBlock"] * 2
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(5)
    a = model(x)
    torch.manual_seed(5)
    assert torch.equal(model(x), a)
    assert not torch.equal(model(x), a)


def test_batch_statistics_forward_under_vmap_equals_a_loop_over_tasks():
    model = tiny_maml_net()
    tasks = image_tasks()
    params = parameters_of(model)
    mapped = torch.func.vmap(lambda x: torch.func.functional_call(model, params, (x,)))(tasks.query.x)
    looped = torch.stack([model(tasks.query.x[i]) for i in range(3)])
    torch.testing.assert_close(mapped, looped, rtol=1e-12, atol=1e-12)


def test_second_order_maml_routes_agree_through_resnet12():
    """vmap of per-task gradients (the route DESIGN.md section 5 prescribes with BatchNorm) equals the loop and
    the threads route, in float64."""
    model, tasks = tiny_maml_net(), image_tasks()
    algo = MAML(inner_lr=0.1, inner_steps=2)
    params = parameters_of(model)
    g_loop, l_loop = meta_gradient(algo, model, params, tasks, route="loop")
    for route in ("vmap", "threads"):
        g, loss = meta_gradient(algo, model, params, tasks, route=route, workers=2)
        assert torch.allclose(loss, l_loop, rtol=1e-12), route
        assert torch.allclose(flat(g), flat(g_loop), rtol=1e-9, atol=1e-12), route


def test_second_order_maml_meta_gradient_equals_central_finite_differences():
    """Directional derivatives of the mean query loss after one inner step, along random directions and along
    the head, against the meta-gradient (float64, widths 4-4-4-4)."""
    model, tasks = tiny_maml_net(), image_tasks(n=2)
    algo = MAML(inner_lr=0.1, inner_steps=1)
    params = {k: v.detach() for k, v in parameters_of(model).items()}
    g, _ = meta_gradient(algo, model, params, tasks, route="loop")
    theta = flat(params)

    def f(vector: torch.Tensor) -> float:
        p = unflat(vector, params)
        return sum(task_loss(algo, model, p, task_at(tasks, i))[0].item() for i in range(2)) / 2

    eps = 1e-5  # a step of this length crosses no kink of the max-pools and LeakyReLUs here
    gen = torch.Generator().manual_seed(1)
    directions = [torch.randn(len(theta), generator=gen, dtype=torch.float64) for _ in range(6)]
    directions += list(torch.eye(len(theta), dtype=torch.float64)[-10:])  # the head: one coordinate at a time
    for v in directions:
        v = v / v.norm()
        fd = (f(theta + eps * v) - f(theta - eps * v)) / (2 * eps)
        exact = float(flat(g) @ v)
        assert abs(fd - exact) <= 1e-6 * max(1.0, abs(exact)), (fd, exact)
    assert flat(g).norm() > 1e-3  # not trivially zero


def test_fast_batchnorm_double_backward_equals_pytorchs_through_resnet12():
    ours = tiny_maml_net(ways=3)
    theirs = tiny_maml_net(ways=3)
    swapped = 0
    for module in theirs.modules():
        for name, child in module.named_children():
            if isinstance(child, BatchNorm2d):
                plain = nn.BatchNorm2d(child.num_features, track_running_stats=False).double()
                plain.load_state_dict(child.state_dict())
                setattr(module, name, plain)
                swapped += 1
    assert swapped == 16 and not any(isinstance(m, BatchNorm2d) for m in theirs.modules())
    tasks = image_tasks(ways=3)
    maml = MAML(inner_lr=0.4, inner_steps=2)
    a, loss_a = meta_gradient(maml, ours, parameters_of(ours), tasks, route="loop")
    b, loss_b = meta_gradient(maml, theirs, parameters_of(theirs), tasks, route="loop")
    assert torch.allclose(loss_a, loss_b, rtol=1e-12)
    for name in b:
        scale = b[name].abs().max().item()
        assert torch.allclose(a[name], b[name], rtol=0, atol=1e-9 * max(scale, 1e-3)), name


def test_every_standard_algorithm_gets_resnet12_and_the_others_refuse_it():
    request = ModelRequest("images", 3, 32, hidden=8, ways=4, classes=10, shots=2, backbone="resnet12")
    assert embedding_features(request) == 80
    maml = standard_network(request, 4, batch_statistics=True)
    assert isinstance(maml, ResNet12) and maml.head.out_features == 4
    assert not any(m.track_running_stats for m in maml.modules() if isinstance(m, nn.BatchNorm2d))
    embed = standard_network(request)
    assert embed(torch.randn(2, 3, 32, 32)).shape == (2, embedding_features(request))
    with pytest.raises(ValueError, match="no extra inputs"):
        standard_network(request, 4, extra_inputs=2)
    with pytest.raises(ValueError, match="read images"):
        standard_network(dataclasses.replace(request, data="vectors"))
    with pytest.raises(ValueError, match="too small"):
        standard_network(dataclasses.replace(request, image_size=12))

    for algorithm in (
        "protonet",
        "matching",
        "siamese",
        "maml",
        "metasgd",
        "mamlpp",
        "snail",
        "icl",
        "baseline",
    ):
        config = TrainConfig.of(algorithm=algorithm, backbone="resnet12", in_features=3, classes=10,
                                image_size=32, hidden=8, threads=1)  # fmt: skip
        model = config.build_model()
        assert any(isinstance(m, ResNet12) for m in model.modules()), algorithm
        assert all(
            p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4
        )
    for algorithm in ("relation", "mann"):
        with pytest.raises(ValueError, match=f"{algorithm} builds its own network"):
            TrainConfig.of(algorithm=algorithm, backbone="resnet12")


def test_configuration_refuses_resnet12_and_dropblock_where_they_cannot_work():
    with pytest.raises(ValueError, match="backbone resnet12 reads images; dataset sinusoid gives regression"):
        TrainConfig.of(algorithm="maml", backbone="resnet12", dataset="sinusoid")
    with pytest.raises(ValueError, match="dropblock is a resnet12 setting"):
        TrainConfig.of(dropblock=0.1)
    with pytest.raises(ValueError, match="unknown backbone"):
        TrainConfig.of(backbone="resnet50")
    with pytest.raises(ValueError, match="below 1"):
        TrainConfig.of(backbone="resnet12", dropblock=1.0)
    for route in ("vmap", "threads"):
        with pytest.raises(ValueError, match=f"route {route} cannot repeat"):
            TrainConfig.of(algorithm="maml", backbone="resnet12", dropblock=0.1, route=route, threads=2)
    config = TrainConfig.of(algorithm="maml", backbone="resnet12", dropblock=0.1, route="loop", in_features=3)
    assert config.build_model().encoder[3].dropblock.drop_rate == 0.1


def write_rgb_folder(root: Path, classes: int = 15, per_class: int = 8, size: int = 16) -> Path:
    """Colour images: a smooth random class template at half contrast plus strong noise (std 80 of 255), one
    subfolder of PNG files per class; an untrained ResNet-12 tells 3 of these classes apart ~60% of the time."""
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    templates = F.interpolate(torch.rand(classes, 3, 4, 4, generator=g), size=(size, size), mode="bilinear")
    for c in range(classes):
        folder = root / f"c{c:02d}"
        folder.mkdir(parents=True)
        for j in range(per_class):
            image = 128 + (templates[c] - 0.5) * 128 + 80 * torch.randn(3, size, size, generator=g)
            Image.fromarray(image.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()).save(
                folder / f"{j}.png"
            )
    return root


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory) -> Path:
    return write_rgb_folder(tmp_path_factory.mktemp("rgb"))


TRAINED_BY_BATCHES = ("baseline", "baselinepp")


@pytest.mark.parametrize(
    "algorithm",
    ["protonet", "matching", "siamese", "maml", "fomaml", "anil", "metasgd", "reptile", "mamlpp", "metalstm", "adml",
     "snail", "icl", *TRAINED_BY_BATCHES, "scratch"],
)  # fmt: skip
def test_every_algorithm_with_a_standard_network_trains_and_validates_with_resnet12(
    algorithm, rgb_folder, tmp_path
):
    from fewshot.train import Trainer

    settings = dict(algorithm=algorithm, dataset="folder", data_root=str(rgb_folder), channels=3, image_size=16,
                    backbone="resnet12", hidden=4, test_queries=2)  # fmt: skip
    if algorithm != "scratch":  # (nothing to train: its network is fine-tuned at test time)
        settings |= dict(steps=2, log_every=1, val_every=2, val_episodes=2, val_ways=3, val_shots=1)
    if algorithm not in (*TRAINED_BY_BATCHES, "scratch"):
        settings |= dict(ways=3, shots=1, queries=2)
    trainer = Trainer(TrainConfig.of(**settings, threads=1), tmp_path / "run", progress=False)
    trainer.run()
    assert any(isinstance(m, ResNet12) for m in trainer.model.modules())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_protonet_with_resnet12_learns_colour_images(rgb_folder, tmp_path):
    from fewshot.algorithms.protonet import ProtoNet
    from fewshot.evaluate import evaluate
    from fewshot.train import Trainer

    config = TrainConfig.of(
        algorithm="protonet", dataset="folder", data_root=str(rgb_folder), channels=3, image_size=16,
        backbone="resnet12", hidden=8, ways=3, shots=2, queries=3, steps=30, log_every=10, val_every=30,
        val_episodes=30, val_ways=3, val_shots=2, test_queries=3, outer_lr=3e-3, seed=0,
    )  # fmt: skip
    trainer = Trainer(config, tmp_path / "run", progress=False)
    assert isinstance(trainer.model, ResNet12)

    def accuracy() -> float:  # 3-way 2-shot episodes of the training classes, the same ones each time
        return evaluate(
            ProtoNet(), trainer.model, trainer.train_data, 3, 2, 3, episodes=50, progress=False
        ).mean

    before = accuracy()
    trainer.run()
    after = accuracy()
    assert before < 0.7 and after > 0.85, (before, after)  # 0.59 -> 0.92 when written
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if m.get("loss") is not None]
    assert losses[-1] < 0.4 * losses[0], losses  # 5.1 -> 1.7 when written
    val = [m["val_score"] for m in metrics if "val_score" in m][-1]
    assert val > 0.5, val  # chance 1/3, on 3 classes never trained on (0.74 when written)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert saved["backbone"] == "resnet12"


def test_a_run_with_dropblock_resumes_to_the_weights_of_one_trained_in_one_go(rgb_folder, tmp_path):
    """DropBlock's masks are drawn from torch's generator seeded by (seed, step): a run stopped after step 2 and
    resumed ends bit for bit where an uninterrupted one does, and the masks did act (another seed differs)."""
    import dataclasses

    from conftest import resume_ends_where_one_go_does
    from fewshot.train import Trainer

    config = TrainConfig.of(
        algorithm="protonet", dataset="folder", data_root=str(rgb_folder), channels=3, image_size=16,
        backbone="resnet12", hidden=4, dropblock=0.3, ways=3, shots=1, queries=2, steps=4, log_every=2,
        val_every=0, threads=1,
    )  # fmt: skip
    a = resume_ends_where_one_go_does(config, tmp_path, stop_at=2).model.state_dict()
    plain = Trainer(dataclasses.replace(config, dropblock=0.0), tmp_path / "plain", progress=False)
    plain.run()
    assert not all(torch.equal(a[k], plain.model.state_dict()[k]) for k in a)


def test_auto_route_with_dropblock_is_the_loop():
    """threads and vmap cannot repeat DropBlock's draws: --route auto takes the loop instead of refusing."""
    config = TrainConfig.of(algorithm="maml", backbone="resnet12", dropblock=0.1, threads=2)
    assert config.route == "loop"
