"""A small fully connected network on a synthetic classification task, for the edge of stability.

Cohen et al. 2021 ("Gradient descent on neural networks typically occurs at the edge of
stability") train fully connected tanh networks with full-batch gradient descent and the
squared loss, and watch the sharpness (the Hessian's largest eigenvalue) rise to 2/lr and
hover there. This objective is that network in plain torch: no download, the data set is
drawn from `data_seed` on the run's device (kept apart from `trainer.seed`, which draws the
initial weights and the mini-batch order), and the loss is twice differentiable so that
Hessian-vector products (double backward) work.

The experiment itself uses 16 -> 128 -> 128 -> 4 (tanh, MSE, random labels) on 1000 samples,
the constructor's defaults; the `objective=mlp` preset is a smaller 16 -> 16 -> 16 -> 4 on 100
samples so that `gdlab-check objective=mlp` stays quick: its finite differences evaluate the
loss four times per parameter and point, 612 parameters here against the experiment's 19 204
(about 5 s against several minutes on two CPU cores).

The loss is written once for one setting of the parameters and also broadcasts over a leading
member dimension of every parameter (`h @ w.mT + b[..., None, :]`, reductions over the last
dimensions), so a population evaluates all members in one batched call.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gdlab.errors import GdlabError
from gdlab.memory import Footprint, count, with_defaults
from gdlab.objectives.base import (
    Objective,
    Params,
    integer,
    mini_batch_size,
    positive_int,
    require,
)


def identity(x: Tensor) -> Tensor:
    """The activation of a deep linear network (module level: objectives may be pickled)."""
    return x


#: hidden-layer activations by name; all but relu are smooth, so the Hessian is continuous
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "gelu": F.gelu,
    "softplus": F.softplus,
    "sigmoid": torch.sigmoid,
    "identity": identity,
}
LOSSES = ("mse", "cross_entropy")
LABELS = ("random", "teacher")


def one_of(key: str, value: object, allowed: Sequence[str]) -> str:
    """A config string that must be one of `allowed`; the error lists them."""
    require(
        isinstance(value, str) and value in allowed,
        f"{key}={value!r} is not one of: {', '.join(allowed)}",
    )
    return str(value)


def int_list(key: str, values: object) -> list[int]:
    """A config list of integers >= 1 (possibly empty), each error naming its entry."""
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise GdlabError(f"{key}={values!r} must be a list of integers >= 1")
    return [positive_int(f"{key}[{i}]", v) for i, v in enumerate(values)]


class MLP(Objective):
    """A fully connected network n_inputs -> widths... -> n_classes on seeded synthetic data."""

    name = "mlp"

    def __init__(
        self,
        n_samples: int = 1000,
        n_inputs: int = 16,
        widths: Sequence[int] = (128, 128),
        n_classes: int = 4,
        activation: str = "tanh",
        loss_fn: str = "mse",
        labels: str = "random",
        data_seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        self.n_samples = positive_int("objective.n_samples", n_samples)
        self.n_inputs = positive_int("objective.n_inputs", n_inputs)
        self.widths = int_list("objective.widths", widths)
        self.n_classes = positive_int("objective.n_classes", n_classes)
        require(self.n_classes >= 2, f"objective.n_classes={n_classes!r} must be >= 2")
        self.activation = one_of("objective.activation", activation, list(ACTIVATIONS))
        self.loss_fn = one_of("objective.loss_fn", loss_fn, LOSSES)
        self.labels = one_of("objective.labels", labels, LABELS)
        self.data_seed = integer("objective.data_seed", data_seed)
        self.batch_size = mini_batch_size(batch_size, self.n_samples)
        self._act = ACTIVATIONS[self.activation]

    @classmethod
    def memory_footprint(cls, fields: Mapping[str, Any], itemsize: int) -> Footprint:
        """X (n x n_inputs), the one-hot targets and the labels; a forward and backward pass
        keep every layer's activations and their gradients (n x width, a few times); setup
        draws X in float64 first."""
        args = with_defaults(cls, fields)
        n, d, c = count(args["n_samples"]), count(args["n_inputs"]), count(args["n_classes"])
        widths = [count(w) for w in args["widths"]]
        sizes = [d, *widths, c]
        params = sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(sizes))
        batches = 8 * n if args.get("batch_size") is not None else 0
        return Footprint(
            data=n * (d + c) * itemsize + 8 * n,
            work=max(n * (d + c) * 8, 5 * n * (sum(widths) + c) * itemsize) + batches,
            params=params,
            keys=("n_samples", "n_inputs", "widths", "n_classes"),
            n_samples=n,
        )

    @property
    def layer_sizes(self) -> list[int]:
        """Units per layer, inputs and outputs included: [n_inputs, *widths, n_classes]."""
        return [self.n_inputs, *self.widths, self.n_classes]

    @property
    def n_params(self) -> int:
        """Weights and biases in all: 19 204 for the experiment's network."""
        sizes = self.layer_sizes
        return sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(sizes))

    def setup(self, device: torch.device, dtype: torch.dtype) -> None:
        # Drawn in float64 and then cast, so float32 and float64 runs (and a teacher's argmax)
        # see the same data set up to rounding.
        gen = torch.Generator(device=device).manual_seed(self.data_seed)
        n, d, c = self.n_samples, self.n_inputs, self.n_classes
        X = torch.randn(n, d, generator=gen, device=device, dtype=torch.float64)
        if self.labels == "random":
            y = torch.randint(0, c, (n,), generator=gen, device=device)
        else:  # the argmax of a random linear teacher: a learnable, roughly balanced labelling
            teacher = torch.randn(d, c, generator=gen, device=device, dtype=torch.float64)
            y = (X @ teacher).argmax(dim=1)
        self.X = X.to(dtype)
        self.y = y
        self.targets = F.one_hot(y, c).to(dtype)

    def init_params(
        self, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> Params:
        """PyTorch's default `nn.Linear` init: weights and biases uniform in +-1/sqrt(fan_in),
        drawn layer by layer, weight before bias."""
        params: Params = {}
        sizes = self.layer_sizes
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes), start=1):
            bound = 1.0 / math.sqrt(fan_in)
            for key, shape in ((f"w{i}", (fan_out, fan_in)), (f"b{i}", (fan_out,))):
                value = torch.empty(shape, device=device, dtype=dtype)
                params[key] = value.uniform_(-bound, bound, generator=generator)
        return params

    def forward(self, params: Params, X: Tensor) -> Tensor:
        """Logits [..., n, n_classes]; a leading member dimension of the params broadcasts."""
        h = X
        layers = len(self.widths) + 1
        for i in range(1, layers + 1):
            h = h @ params[f"w{i}"].mT + params[f"b{i}"].unsqueeze(-2)
            if i < layers:
                h = self._act(h)
        return h

    def loss(self, params: Params, batch: Tensor | slice | None = None) -> Tensor:
        """Mean over examples of 0.5 ||f(x) - onehot(y)||^2 (Cohen et al.'s square loss) or of
        the cross-entropy, on the full data (None), sample indices, or a slice of rows."""
        if batch is None:
            X, targets = self.X, self.targets
        else:
            X, targets = self.X[batch], self.targets[batch]
        out = self.forward(params, X)
        if self.loss_fn == "mse":
            residual = out - targets
            return 0.5 * (residual * residual).sum(dim=-1).mean(dim=-1)
        # F.cross_entropy spelled out (logsumexp minus the true class's logit), so that it
        # also broadcasts over a member dimension; equal to it up to rounding
        return (torch.logsumexp(out, dim=-1) - (out * targets).sum(dim=-1)).mean(dim=-1)

    def accuracy(self, params: Params) -> float:
        """Fraction of the data set classified correctly (argmax of the logits)."""
        with torch.no_grad():
            out = self.forward(params, self.X)
            return float((out.argmax(dim=-1) == self.y).double().mean())
