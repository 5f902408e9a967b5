import math

import numpy as np
import torch

from robsal.utils import json_safe, module_mode


def test_module_mode_restores_every_submodule_even_on_error():
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    m.train()
    m[1].eval()  # a frozen BatchNorm inside a training model
    with module_mode(m):
        assert not m.training and not m[0].training and not m[1].training
    assert m.training and m[0].training and not m[1].training
    try:
        with module_mode(m, training=True):
            assert m[1].training
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert m.training and not m[1].training


def test_json_safe_numpy_and_nan():
    out = json_safe({1: np.float32(np.nan), "a": (np.int64(3), np.float64(2.5), np.bool_(True)), "b": [math.inf]})
    assert out == {"1": None, "a": [3, 2.5, True], "b": [None]}
    assert type(out["a"][0]) is int and type(out["a"][1]) is float and type(out["a"][2]) is bool
