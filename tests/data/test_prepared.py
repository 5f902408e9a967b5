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
