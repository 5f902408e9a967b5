import json
import pickle

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from robsal.errors import CheckpointError, ConfigError
from robsal.models import build_model, group_parameters, groups_of, load, load_pretrained, save


def test_model_normalises_inside():
    torch.manual_seed(0)
    model = build_model("resnet18", ["a", "b", "c"], image_size=32).eval()
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = model.net((x - mean) / std)
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert model(x).shape == (2, 3)


def test_head_is_replaced_and_kaiming_initialised():
    torch.manual_seed(0)
    model = build_model("resnet18", ["a", "b", "c", "d"])
    fc = model.net.fc
    assert fc.out_features == 4 and fc.in_features == 512
    # Kaiming normal (fan_in, relu): std = sqrt(2 / fan_in)
    assert fc.weight.std().item() == pytest.approx((2 / 512) ** 0.5, rel=0.1)
    assert torch.count_nonzero(fc.bias) == 0


def test_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(1)
    model = build_model("resnet18", ["mel", "nv", "bkl"], image_size=32)
    model.train()
    model(torch.rand(4, 3, 32, 32))  # move BatchNorm statistics
    model.eval()
    save(model, tmp_path / "m", eps=4.0, metrics={"clean_accuracy": 0.5})
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["eps"] == 4.0 and meta["classes"] == ["mel", "nv", "bkl"] and meta["image_size"] == 32
    loaded = load(tmp_path / "m")
    assert not loaded.training
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_load_refuses_broken_directories(tmp_path):
    with pytest.raises(CheckpointError, match="not a robsal model directory"):
        load(tmp_path)
    model = build_model("resnet18", ["a", "b"])
    save(model, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load(tmp_path / "m")


def test_groups_cover_every_parameter_once():
    model = build_model("resnet18", ["a", "b", "c"])
    groups = groups_of(model)
    assert groups[1] == ["net.conv1", "net.bn1", "net.layer1"] and groups[5] == ["net.fc"]
    seen: dict[str, int] = {}
    for g in groups:
        for name, _ in group_parameters(model, [g]):
            assert name not in seen, f"{name} in groups {seen.get(name)} and {g}"
            seen[name] = g
    assert set(seen) == {n for n, _ in model.named_parameters() if not n.startswith("normalize")}
    assert {n for n, _ in group_parameters(model, [5])} == {"net.fc.weight", "net.fc.bias"}


def test_unknown_arch_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown torchvision model"):
        build_model("resnet19", ["a", "b"])


def test_pretrained_weights_load_from_local_files(tmp_path):
    torch.manual_seed(3)
    ref = torchvision.models.resnet18(weights=None)  # stands in for ImageNet weights
    pth = tmp_path / "resnet18-f37072fd.pth"
    torch.save(ref.state_dict(), pth)
    model = build_model("resnet18", ["a", "b", "c"], pretrained_path=pth)
    assert torch.equal(model.net.conv1.weight, ref.conv1.weight)
    assert torch.equal(model.net.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var)
    assert model.net.fc.out_features == 3  # the 1000-class head is not loaded
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(st))
    model2 = build_model("resnet18", ["a", "b", "c"], pretrained_path=st)
    assert torch.equal(model2.net.layer2[0].conv1.weight, ref.layer2[0].conv1.weight)


def test_pretrained_missing_file_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match=r"resnet18-.*\.pth.*never downloads"):
        build_model("resnet18", ["a", "b"], pretrained=True)


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickle_with_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as fh:
        pickle.dump({"conv1.weight": _Evil()}, fh)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_pretrained(torchvision.models.resnet18(weights=None), bad)
    assert not (tmp_path / "PWNED").exists()


def test_wrong_architecture_checkpoint_is_refused(tmp_path):
    pth = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), pth)
    with pytest.raises(CheckpointError, match="does not fit"):
        build_model("resnet18", ["a", "b"], pretrained_path=pth)


def _saved_model(tmp_path):
    from robsal.models import build_model, save

    m = build_model("resnet18", ["a", "b", "c"], image_size=32)
    save(m, tmp_path / "m")
    return tmp_path / "m"


@pytest.mark.parametrize("edit", [
    lambda d: [],                                   # a list instead of an object
    lambda d: "resnet18",                           # a string
    lambda d: {**d, "arch": 18},
    lambda d: {**d, "classes": "a,b,c"},
    lambda d: {**d, "classes": ["a", "a"]},
    lambda d: {**d, "mean": [0.5, "x", 0.5]},
    lambda d: {**d, "std": [0.2, 0.2, 0]},
    lambda d: {**d, "image_size": "224"},
    lambda d: {**d, "eps": -1},
    lambda d: {**d, "metrics": [1, 2]},
])
def test_hand_edited_model_json_is_a_one_line_checkpoint_error(tmp_path, edit):
    import json

    from robsal.errors import CheckpointError
    from robsal.models import load

    d = _saved_model(tmp_path)
    meta = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps(edit(meta)))
    with pytest.raises(CheckpointError) as exc:
        load(d)
    assert "\n" not in str(exc.value) and "model.json" in str(exc.value)


def test_saving_a_model_on_a_full_disk_is_a_disk_full_error_with_no_temporary(small_fs):
    from robsal.io import DiskFullError
    from robsal.models import build_model, save

    mnt = small_fs("size=1m")
    m = build_model("resnet18", ["a", "b", "c"], image_size=32)  # 45 MB of weights > 1 MiB
    with pytest.raises(DiskFullError, match="no space left"):
        save(m, mnt / "m")
    assert not [p for p in mnt.rglob("*") if p.is_file()]
