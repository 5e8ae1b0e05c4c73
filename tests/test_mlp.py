"""The `mlp` objective: its fields, data, init, loss values, batching and second derivatives."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gdlab.errors import GdlabError
from gdlab.events import RunResult
from gdlab.objectives.mlp import MLP
from gdlab.population import BatchedLoss
from tests.test_population import check_population, grid

CPU, F64 = torch.device("cpu"), torch.float64


def tiny(**fields: object) -> MLP:
    """A small network set up in float64 on the CPU (fields override the small defaults)."""
    objective = MLP(**{"n_samples": 24, "n_inputs": 3, "widths": [5, 4], "n_classes": 3, **fields})
    objective.setup(CPU, F64)
    return objective


def start(objective: MLP, seed: int = 0) -> dict[str, torch.Tensor]:
    return objective.init_params(torch.Generator().manual_seed(seed), CPU, F64)


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"n_samples": 0}, "objective.n_samples"),
        ({"n_inputs": 2.5}, "objective.n_inputs"),
        ({"widths": "128"}, "objective.widths"),
        ({"widths": [32, 0]}, "objective.widths[1]"),
        ({"n_classes": 1}, "objective.n_classes"),
        ({"activation": "swish"}, "objective.activation"),
        ({"loss_fn": "hinge"}, "objective.loss_fn"),
        ({"labels": "noisy"}, "objective.labels"),
        ({"data_seed": 1.5}, "objective.data_seed"),
        ({"batch_size": 0}, "objective.batch_size"),
        ({"n_samples": 10, "batch_size": 11}, "objective.batch_size"),
    ],
)
def test_bad_fields_name_the_key(fields: dict[str, object], key: str) -> None:
    with pytest.raises(GdlabError, match=key.replace(".", r"\.").replace("[", r"\[")):
        MLP(**fields)


def test_a_bad_choice_lists_the_allowed_ones() -> None:
    with pytest.raises(GdlabError, match="tanh, relu, gelu, softplus, sigmoid, identity"):
        MLP(activation="swish")
    with pytest.raises(GdlabError, match="mse, cross_entropy"):
        MLP(loss_fn="hinge")


def test_params_have_nn_linear_shapes_and_init() -> None:
    objective = tiny()
    params = start(objective, seed=3)
    assert list(params) == ["w1", "b1", "w2", "b2", "w3", "b3"]
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    assert shapes == {"w1": (5, 3), "b1": (5,), "w2": (4, 5), "b2": (4,), "w3": (3, 4), "b3": (3,)}
    assert objective.n_params == sum(v.numel() for v in params.values())
    # the same draws as torch.nn.Linear layer by layer from the same generator state
    torch.manual_seed(3)
    for i, (fan_in, fan_out) in enumerate([(3, 5), (5, 4), (4, 3)], start=1):
        layer = torch.nn.Linear(fan_in, fan_out, dtype=F64)
        torch.testing.assert_close(params[f"w{i}"], layer.weight.detach())
        torch.testing.assert_close(params[f"b{i}"], layer.bias.detach())
        assert float(params[f"w{i}"].abs().max()) <= 1 / math.sqrt(fan_in)
    again, other = start(objective, seed=3), start(objective, seed=4)
    assert all(torch.equal(params[k], again[k]) for k in params)
    assert not torch.equal(params["w1"], other["w1"])


def test_no_hidden_layer_is_a_linear_model() -> None:
    objective = tiny(widths=[])
    params = start(objective)
    assert {k: tuple(v.shape) for k, v in params.items()} == {"w1": (3, 3), "b1": (3,)}
    logits = objective.forward(params, objective.X)
    torch.testing.assert_close(logits, objective.X @ params["w1"].T + params["b1"])


@pytest.mark.parametrize("labels", ["random", "teacher"])
def test_data_depend_on_data_seed_only(labels: str) -> None:
    a, b, c = tiny(labels=labels), tiny(labels=labels), tiny(labels=labels, data_seed=1)
    assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y)
    assert not torch.equal(a.X, c.X)
    assert a.y.dtype == torch.int64 and int(a.y.min()) >= 0 and int(a.y.max()) < 3
    assert torch.equal(a.targets, F.one_hot(a.y, 3).double())
    single = MLP(n_samples=24, n_inputs=3, widths=[5, 4], n_classes=3, labels=labels)
    single.setup(CPU, torch.float32)  # float32 runs see the same data set, rounded
    assert torch.equal(single.y, a.y) and torch.equal(single.X, a.X.float())


def test_teacher_labels_are_the_argmax_of_a_linear_map() -> None:
    objective = tiny(labels="teacher", n_samples=500)
    # a linear model separates them: least squares on one-hot targets already gets most right
    design = torch.cat([objective.X, torch.ones(500, 1, dtype=F64)], dim=1)
    fit = torch.linalg.lstsq(design, objective.targets).solution
    assert float(((design @ fit).argmax(1) == objective.y).double().mean()) > 0.8


def hand_network(activation: str, loss_fn: str) -> tuple[MLP, dict[str, torch.Tensor]]:
    """1 -> 1 -> 2 on x = [1, 2], labels [0, 1]: h = act(2x + 1), out = [h, 1 - h]."""
    objective = MLP(
        n_samples=2, n_inputs=1, widths=[1], n_classes=2, activation=activation, loss_fn=loss_fn
    )
    objective.setup(CPU, F64)
    objective.X = torch.tensor([[1.0], [2.0]], dtype=F64)
    objective.y = torch.tensor([0, 1])
    objective.targets = F.one_hot(objective.y, 2).double()
    params = {
        "w1": torch.tensor([[2.0]], dtype=F64),
        "b1": torch.tensor([1.0], dtype=F64),
        "w2": torch.tensor([[1.0], [-1.0]], dtype=F64),
        "b2": torch.tensor([0.0, 1.0], dtype=F64),
    }
    return objective, params


def test_loss_values_by_hand() -> None:
    objective, params = hand_network("identity", "mse")
    # x=1: h=3, out=[3, -2], target [1, 0]: 0.5 (4 + 4) = 4; x=2: h=5, out=[5, -4], target
    # [0, 1]: 0.5 (25 + 25) = 25; mean 14.5
    assert float(objective.loss(params)) == pytest.approx(14.5, rel=1e-15)
    objective, params = hand_network("tanh", "mse")
    t3, t5 = math.tanh(3.0), math.tanh(5.0)
    mse = 0.5 * ((t3 - 1) ** 2 + (1 - t3) ** 2) + 0.5 * (t5**2 + t5**2)
    assert float(objective.loss(params)) == pytest.approx(mse / 2, rel=1e-14)
    objective, params = hand_network("identity", "cross_entropy")
    # x=1: logits [3, -2], class 0: log(1 + e^-5); x=2: logits [5, -4], class 1: 9 + log(1+e^-9)
    ce = math.log1p(math.exp(-5.0)) + 9.0 + math.log1p(math.exp(-9.0))
    assert float(objective.loss(params)) == pytest.approx(ce / 2, rel=1e-14)


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu", "softplus", "sigmoid"])
def test_mse_and_cross_entropy_match_torch(activation: str) -> None:
    mse, ce = tiny(activation=activation), tiny(activation=activation, loss_fn="cross_entropy")
    params = start(mse)
    logits = mse.forward(params, mse.X)
    expected = 0.5 * F.mse_loss(logits, mse.targets, reduction="sum") / mse.n_samples
    torch.testing.assert_close(mse.loss(params), expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(ce.loss(params), F.cross_entropy(logits, ce.y), rtol=1e-14, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_experiments_network_starts_with_small_outputs(seed: int) -> None:
    # 16 -> 128 -> 128 -> 4 on 1000 samples: MSE near 0.5, cross-entropy near log(4)
    mse, ce = MLP(), MLP(loss_fn="cross_entropy")
    for objective in (mse, ce):
        objective.setup(CPU, F64)
    params = start(mse, seed)
    assert 0.45 < float(mse.loss(params)) < 0.65
    assert float(ce.loss(params)) == pytest.approx(math.log(4), rel=0.05)


@pytest.mark.parametrize("loss_fn", ["mse", "cross_entropy"])
def test_minibatch_on_every_row_is_the_full_loss(loss_fn: str) -> None:
    objective = tiny(loss_fn=loss_fn, batch_size=8)
    params = start(objective)
    full = objective.loss(params)
    torch.testing.assert_close(objective.loss(params, torch.arange(24)), full)
    torch.testing.assert_close(objective.loss(params, torch.randperm(24)), full)
    torch.testing.assert_close(objective.loss(params, slice(0, 24)), full)
    # row chunks weighted by their share add up to the full loss (trainer.chunk_rows)
    chunks = objective.loss(params, slice(0, 10)) * 10 / 24 + objective.loss(
        params, slice(10, 24)
    ) * (14 / 24)
    torch.testing.assert_close(chunks, full)
    indices = torch.tensor([3, 7, 7, 20])
    manual = objective.forward(params, objective.X[indices])
    assert objective.loss(params, indices).shape == ()
    assert manual.shape == (4, 3)


def members(objective: MLP, count: int) -> dict[str, torch.Tensor]:
    """`count` different starts stacked along a leading member dimension."""
    starts = [start(objective, seed) for seed in range(count)]
    return {k: torch.stack([s[k] for s in starts]) for k in starts[0]}


@pytest.mark.parametrize("loss_fn", ["mse", "cross_entropy"])
@pytest.mark.parametrize("strategy", ["auto", "vmap", "broadcast"])
@pytest.mark.parametrize("mini_batch", [False, True])
def test_batched_loss_equals_each_member(loss_fn: str, strategy: str, mini_batch: bool) -> None:
    objective = tiny(loss_fn=loss_fn, activation="gelu")
    params = members(objective, 5)
    batch = torch.stack([torch.randperm(24)[:8] for _ in range(5)]) if mini_batch else None
    batched = BatchedLoss(objective.loss, strategy)
    assert batched.choose(params, (batch,)) in ("broadcast", "vmap")
    assert not batched.rejected  # the first candidate, broadcast, already works
    values, grads = batched(params, batch)
    for i in range(5):
        leaves = {k: v[i].clone().requires_grad_(True) for k, v in params.items()}
        value = objective.loss(leaves) if batch is None else objective.loss(leaves, batch[i])
        member_grads = torch.autograd.grad(value, list(leaves.values()))
        torch.testing.assert_close(values[i], value.detach(), rtol=1e-13, atol=0)
        for k, g in zip(leaves, member_grads, strict=True):
            torch.testing.assert_close(grads[k][i], g, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("activation", ["tanh", "gelu", "softplus", "sigmoid", "relu"])
@pytest.mark.parametrize("loss_fn", ["mse", "cross_entropy"])
def test_hessian_vector_product_by_double_backward(activation: str, loss_fn: str) -> None:
    objective = MLP(
        n_samples=6, n_inputs=2, widths=[3], n_classes=2, activation=activation, loss_fn=loss_fn
    )
    objective.setup(CPU, F64)
    params = start(objective)
    names, shapes = list(params), [v.shape for v in params.values()]
    sizes = [v.numel() for v in params.values()]

    def unflatten(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = flat.split(sizes)
        return {k: p.reshape(s) for k, p, s in zip(names, parts, shapes, strict=True)}

    flat = torch.cat([v.reshape(-1) for v in params.values()])
    hessian = torch.autograd.functional.hessian(lambda x: objective.loss(unflatten(x)), flat)
    v = torch.randn(flat.numel(), generator=torch.Generator().manual_seed(1), dtype=F64)
    leaves = {k: p.clone().requires_grad_(True) for k, p in params.items()}
    grads = torch.autograd.grad(objective.loss(leaves), list(leaves.values()), create_graph=True)
    dot = sum((g.reshape(-1) * part).sum() for g, part in zip(grads, v.split(sizes), strict=True))
    hvp = torch.autograd.grad(dot, list(leaves.values()))
    torch.testing.assert_close(
        torch.cat([h.reshape(-1) for h in hvp]), hessian @ v, rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(hessian, hessian.T, rtol=1e-10, atol=1e-12)


def test_gradient_descent_fits_the_labels(
    run_config: Callable[..., tuple[RunResult, Path]],
) -> None:
    # 64 random labels memorised by 16 tanh units: the loss falls from ~0.54 to ~0.12
    result, _ = run_config(
        "objective=mlp",
        "objective.n_samples=64",
        "objective.widths=[16]",
        "optimizer.lr=0.5",
        "trainer.steps=100",
        "logger=none",
    )
    assert result.status == "finished" and result.steps == 100
    assert result.initial_loss is not None and result.initial_loss > 0.4
    assert result.final_loss < 0.5 * result.initial_loss
    assert result.minimum is None and result.distance_to_minimizer is None


def test_population_members_equal_plain_runs() -> None:
    result = check_population(
        [
            "objective=mlp",
            "objective.n_samples=40",
            "objective.widths=[8]",
            "trainer.steps=25",
            "device.dtype=float64",
        ],
        grid(lr=[0.1, 1.0, 200.0], momentum=[0.0, 0.9]),
    )
    assert set(result.status) == {"finished", "diverged"}  # lr=200 diverges
    check_population(
        [
            "objective=mlp",
            "objective.n_samples=40",
            "objective.widths=[8]",
            "objective.batch_size=10",
            "objective.loss_fn=cross_entropy",
            "trainer.steps=25",
        ],
        grid(lr=[0.1, 1.0], seed=[0, 1]),
    )
