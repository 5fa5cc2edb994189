"""The network: a multilayer perceptron over flattened images.

Input size and number of classes come from the data (the pipeline fills them in), so the same
config trains on any image size or label set. ``backbone`` and ``head`` are separate so fine-tuning
can freeze the one and replace the other.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mlplab.rules import check_arguments

ACTIVATIONS: dict[str, type[nn.Module]] = {  # the names are mlplab.choices.ACTIVATIONS (tests compare)
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


class MLP(nn.Module):
    """Flatten -> [Linear -> (BatchNorm) -> activation -> (Dropout)] per hidden layer -> Linear head."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (512, 256),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        check_arguments("model", locals())
        layers: list[nn.Module] = [nn.Flatten()]
        width_in = in_features
        for width in hidden_dims:
            layers.append(nn.Linear(width_in, width, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width_in = width
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Linear(width_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))
