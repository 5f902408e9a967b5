import numpy as np
import pandas as pd
import pytest

from robsal.data import PreparedData
from robsal.errors import DataError


def _data():
    splits = pd.DataFrame(
        {
            "image_id": [f"ISIC_{i:07d}" for i in range(6)],
            "lesion_id": [f"HAM_{i:07d}" for i in range(6)],
            "label": ["a", "b", "a", "b", "a", "b"],
            "split": ["train", "train", "train", "train", "test", "val"],
            "fold": pd.array([1, 1, 2, 2, None, None], dtype="Int64"),
        }
    )
    images = (np.arange(6 * 3 * 4 * 4) % 256).astype(np.uint8).reshape(6, 3, 4, 4)
    return PreparedData(images=images, labels=np.array([0, 1, 0, 1, 0, 1]), classes=["a", "b"], splits=splits)


def test_indices_select_splits_and_folds():
    d = _data()
    assert d.indices("train").tolist() == [0, 1, 2, 3]
    assert d.indices("train", fold=2).tolist() == [2, 3]
    assert d.indices("train", exclude_fold=2).tolist() == [0, 1]
    assert d.indices("test").tolist() == [4] and d.indices("val").tolist() == [5]


def test_batch_is_float_in_unit_range_and_rows_of_names_unknown_ids():
    d = _data()
    x, y = d.batch([1, 4])
    assert x.dtype.is_floating_point and float(x.max()) <= 1.0
    assert np.allclose(x.numpy() * 255, d.images[[1, 4]])
    assert y.tolist() == [1, 0]
    assert d.rows_of(["ISIC_0000003", "ISIC_0000000"]).tolist() == [3, 0]
    with pytest.raises(DataError, match="ISIC_9"):
        d.rows_of(["ISIC_9"])


def test_device_resident_gather_equals_the_host_path():
    import torch

    from robsal.data.prepared import gather

    d = _data()
    assert d.device_arrays("cpu") is None  # the CPU path gathers from the host array
    resident = (torch.from_numpy(d.images.copy()), torch.from_numpy(d.labels.copy()))
    idx = np.array([5, 0, 3, 3])
    x_dev, y_dev = gather(resident, idx)
    x_host, y_host = d.batch(idx)
    assert torch.equal(x_dev, x_host) and torch.equal(y_dev, y_host)


def test_device_cache_is_made_once_and_respects_the_budget(monkeypatch):
    import torch

    import robsal.data.prepared as P

    d = _data()
    first = d.device_arrays("meta")  # a device without storage: shapes and dtypes only
    assert first is not None and first[0].shape == (6, 3, 4, 4) and first[0].dtype == torch.uint8
    assert d.device_arrays("meta") is first  # copied once
    x, y = d.batch([1, 2], "meta")
    assert x.device.type == "meta" and x.shape == (2, 3, 4, 4) and x.dtype == torch.float32
    monkeypatch.setattr(P, "DEVICE_CACHE_MAX_BYTES", 10)  # too small: per-batch copies instead
    small = _data()
    assert small.device_arrays("meta") is None
    assert small.batch([1], "meta")[0].shape == (1, 3, 4, 4)
