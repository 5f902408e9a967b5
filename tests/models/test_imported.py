"""robsal.models.imported: a torchvision or timm classifier trained elsewhere, as a robsal model."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from robsal.errors import CheckpointError, ConfigError
from robsal.models import load
from robsal.models.build import Normalize
from robsal.models.imported import gradcam_candidates, import_model, read_state_dict
from robsal.saliency import explain
from robsal.saliency.visualize import reduce_channels

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _torchvision_net(seed=0, classes=3):
    torch.manual_seed(seed)
    net = torchvision.models.get_model("resnet18", weights=None, num_classes=classes)
    net.train()
    net(torch.rand(4, 3, 32, 32))  # move BatchNorm statistics away from their initial values
    return net.eval()


def _logits(net, x, mean=MEAN, std=STD):
    with torch.no_grad():
        return net(Normalize(mean, std)(x))


def test_torchvision_state_dict_gives_the_original_logits(tmp_path):
    net = _torchvision_net()
    torch.save(net.state_dict(), tmp_path / "w.pth")
    import_model("torchvision:resnet18", tmp_path / "w.pth", ["a", "b", "c"], tmp_path / "m",
                 image_size=32, mean=MEAN, std=STD)
    model = load(tmp_path / "m")
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
    torch.testing.assert_close(ours, _logits(net, x), rtol=0, atol=0)
    assert model.meta["arch"] == "torchvision:resnet18" and model.meta["gradcam_layer"] == "net.layer4"
    assert model.meta["imported"]["sha256"] and model.meta["eps"] == 0.0


def test_wrapped_and_prefixed_state_dicts_are_unwrapped(tmp_path):
    net = _torchvision_net(seed=2)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "w.pt")
    state = read_state_dict(tmp_path / "w.pt")
    assert set(state) == set(net.state_dict())
    import_model("torchvision:resnet18", tmp_path / "w.pt", ["a", "b", "c"], tmp_path / "m", image_size=32)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "m")(x), _logits(net, x, (0.485, 0.456, 0.406),
                                                                       (0.229, 0.224, 0.225)), rtol=0, atol=0)


def test_weights_that_do_not_fit_get_one_line_naming_the_key(tmp_path):
    net = _torchvision_net()
    torch.save(net.state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"fc\.weight has 3 outputs but 4 classes were given"):
        import_model("torchvision:resnet18", tmp_path / "w.pth", list("abcd"), tmp_path / "m1", image_size=32)
    with pytest.raises(CheckpointError, match=r"does not fit torchvision:resnet50: .*missing \(first: "):
        import_model("torchvision:resnet50", tmp_path / "w.pth", list("abc"), tmp_path / "m2", image_size=32)
    state = net.state_dict()
    state.pop("layer1.0.conv1.weight")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=r"1 missing \(first: layer1\.0\.conv1\.weight\)"):
        import_model("torchvision:resnet18", tmp_path / "w.safetensors", list("abc"), tmp_path / "m3", image_size=32)
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m3" / "model.json").exists()


def test_pickled_objects_and_unknown_architectures_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(CheckpointError, match="not a plain tensor state dict"):
        read_state_dict(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "none.pt")
    torch.save(_torchvision_net().state_dict(), tmp_path / "w.pth")
    for arch, msg in (("torchvision:resnet1", "unknown torchvision model 'resnet1'"),
                      ("keras:resnet18", "give torchvision:<name> or timm:<name>")):
        with pytest.raises(ConfigError, match=msg):
            import_model(arch, tmp_path / "w.pth", list("abc"), tmp_path / "m", image_size=32)


def test_an_existing_model_directory_is_not_overwritten(tmp_path):
    torch.save(_torchvision_net().state_dict(), tmp_path / "w.pth")
    import_model("torchvision:resnet18", tmp_path / "w.pth", list("abc"), tmp_path / "m", image_size=32)
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a model"):
        import_model("torchvision:resnet18", tmp_path / "w.pth", list("xyz"), tmp_path / "m", image_size=32)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before


def test_cli_imports_and_bad_input_is_one_line_exit_2(tmp_path, capsys):
    from robsal.cli import main

    torch.save(_torchvision_net().state_dict(), tmp_path / "w.pth")
    spec = tmp_path / "spec.yaml"
    spec.write_text("arch: torchvision:resnet18\nweights: w.pth\nclasses: [mel, nv, bkl]\nimage_size: 32\n")
    assert main(["import-model", str(spec), "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "imported torchvision:resnet18 (3 classes: mel, nv, bkl; 32 px; Grad-CAM layer net.layer4)" in out
    bad = subprocess.run([sys.executable, "-m", "robsal", "import-model", "--arch", "torchvision:resnet18",
                          "--weights", str(tmp_path / "w.pth"), "--classes", "mel,nv", "--image-size", "32",
                          "--out", str(tmp_path / "m2")], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "2 classes were given" in bad.stderr


# --------------------------------------------------------------------------- timm

timm = pytest.importorskip("timm")


def _timm_net(name, seed=0, classes=3, size=64):
    torch.manual_seed(seed)
    net = timm.create_model(name, pretrained=False, num_classes=classes)
    net.train()
    net(torch.rand(2, 3, size, size))
    return net.eval()


@pytest.mark.parametrize("name,head,layer", [("convnext_atto", "head.fc", "net.stages.3"),
                                             ("resnet10t", "fc", "net.layer4")])
def test_timm_state_dict_gives_the_original_logits(tmp_path, name, head, layer):
    net = _timm_net(name)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "w.safetensors")
    import_model(f"timm:{name}", tmp_path / "w.safetensors", ["a", "b", "c"], tmp_path / "m",
                 image_size=64, mean=MEAN, std=STD)
    model = load(tmp_path / "m")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(x), _logits(net, x), rtol=0, atol=0)
    assert model.meta["gradcam_layer"] == layer
    assert model.head() is model.net.get_submodule(head)  # the head under its timm name


def test_gradcam_on_a_timm_model_matches_pytorch_grad_cam(tmp_path):
    """The Grad-CAM of an imported timm ConvNeXt (head ``head.fc``, layer ``stages.3``, by default)
    is pytorch-grad-cam's GradCAM on the same layer (both min-max normalised)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = _timm_net("convnext_atto", seed=4, size=96)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "w.safetensors")
    import_model("timm:convnext_atto", tmp_path / "w.safetensors", ["a", "b", "c"], tmp_path / "m", image_size=96)
    model = load(tmp_path / "m")
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0)).repeat(3, 1, 1, 1)
    t = torch.tensor([0, 0, 1, 1, 2, 2])
    ours = reduce_channels(explain(model, x, t, "gradcam"), channel_shared=True)  # default layer from model.json
    with GradCAM(model=model, target_layers=[model.net.stages[3]]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(k)) for k in t])
    compared = 0
    for i in range(len(t)):
        o = ours[i]
        if o.max() == o.min():
            assert ref[i].max() == ref[i].min()
            continue
        o = (o - o.min()) / (o.max() - o.min())
        assert np.corrcoef(o.ravel(), ref[i].ravel())[0, 1] > 0.999
        np.testing.assert_allclose(o, ref[i], atol=2e-3)
        compared += 1
    assert compared >= 3


def test_attention_models_have_no_default_gradcam_layer(tmp_path):
    """A ViT's only convolution is its patch embedding: no default layer, and Grad-CAM says so."""
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3).eval()
    assert gradcam_candidates(net, "timm:vit_tiny_patch16_224") == []
    torch.save(net.state_dict(), tmp_path / "w.pth")
    import_model("timm:vit_tiny_patch16_224", tmp_path / "w.pth", list("abc"), tmp_path / "m")
    model = load(tmp_path / "m")
    assert model.meta["gradcam_layer"] is None
    x = torch.rand(1, 3, 224, 224)
    with pytest.raises(ConfigError, match="no convolutional feature map for Grad-CAM; import it with --gradcam-layer"):
        explain(model, x, None, "gradcam")
    assert explain(model, x, None, "gradcam", layer="net.patch_embed.proj").shape == x.shape  # when asked for
