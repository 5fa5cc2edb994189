"""The MLP: sizes come from the config and the data, bad values are refused with one clear line."""

import pytest
import torch
from torch import nn

from mlplab.models import MLP


@pytest.mark.parametrize(
    "kwargs, linear_shapes",
    [
        ({}, [(512, 784), (256, 512), (10, 256)]),  # the tutorial's 784-512-256-10
        ({"hidden_dims": [32]}, [(32, 784), (10, 32)]),
        ({"hidden_dims": []}, [(10, 784)]),  # plain softmax regression
        ({"hidden_dims": [64, 64, 64], "activation": "gelu", "dropout": 0.3, "batch_norm": True},
         [(64, 784), (64, 64), (64, 64), (10, 64)]),
    ],
)
def test_mlp_layers_follow_config(kwargs, linear_shapes):
    net = MLP(in_features=784, num_classes=10, **kwargs)
    shapes = [tuple(m.weight.shape) for m in net.modules() if isinstance(m, nn.Linear)]
    assert shapes == linear_shapes
    assert net(torch.randn(5, 1, 28, 28)).shape == (5, 10)


def test_mlp_takes_input_and_class_count_from_arguments():
    net = MLP(in_features=3 * 32 * 32, num_classes=7, hidden_dims=[16])
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_dropout_and_batch_norm_are_where_asked():
    net = MLP(784, 10, hidden_dims=[8, 8], dropout=0.5, batch_norm=True)
    kinds = [type(m) for m in net.backbone]
    assert kinds.count(nn.Dropout) == 2 and kinds.count(nn.BatchNorm1d) == 2
    assert not any(isinstance(m, nn.Dropout) for m in MLP(784, 10).modules())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"activation": "sigmoidish"}, "model.activation='sigmoidish' must be one of relu, gelu"),
        ({"dropout": 1.0}, "model.dropout=1.0 must be a number in [0, 1)"),
        ({"dropout": float("nan")}, "model.dropout=nan must be a number in [0, 1)"),
        ({"hidden_dims": [64, 0]}, "model.hidden_dims=[64, 0] must be a list of layer widths >= 1"),
    ],
)
def test_bad_model_config_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        MLP(784, 10, **kwargs)
