import pytest

from robsal.config import from_dict, load_config, parse_override, preset_names
from robsal.errors import ConfigError


def test_presets_load_and_validate():
    assert {"tiny", "quick", "paper"} <= set(preset_names())
    for name in ("tiny", "quick", "paper"):
        cfg = load_config(name)
        assert cfg.name == name


def test_paper_preset_has_the_papers_hyper_parameters():
    cfg = load_config("paper")
    p1, p2 = cfg.train.phase1, cfg.train.phase2
    assert (p1.epochs, p1.batch_size, p1.lr, p1.trainable) == (10, 32, 1e-3, "head")
    assert (p2.epochs, p2.batch_size, p2.lr, p2.lr_decay_epochs, p2.lr_decay) == (25, 16, 3e-4, [15], 0.1)
    assert cfg.train.betas == [0.9, 0.999] and cfg.train.weight_decay == 5e-4
    assert (cfg.adversary.norm, cfg.adversary.steps, cfg.adversary.step_size_factor) == ("l2", 7, 0.2)
    assert cfg.data.image_size == 224 and cfg.eps_l2(4) == pytest.approx(4.0)
    assert (cfg.data.train_per_class, cfg.data.test_per_class, cfg.data.val_per_class) == (800, 299, 50)
    assert cfg.tune.lrs == [1e-3, 3e-4, 1e-4] and cfg.tune.batch_sizes == [8, 16, 32]


def test_eps_scales_with_side_length():
    cfg = load_config("tiny", ["data.image_size=112"])
    assert cfg.eps_l2(4) == pytest.approx(2.0)
    cfg = load_config("tiny", ["adversary.eps_reference_size=null"])
    assert cfg.eps_l2(4) == 4.0


@pytest.mark.parametrize(
    "rule, size, radius",
    [
        ("side", 64, 4 * 64 / 224),  # 1.143: equal per-pixel RMS perturbation
        ("pixels", 64, 4 * 64**2 / 224**2),  # 0.327: proportional to the pixel count
        ("side", 128, 4 * 128 / 224),  # 2.286
        ("pixels", 128, 4 * 128**2 / 224**2),  # 1.306
        ("side", 224, 4.0),  # the two rules agree at the paper's size
        ("pixels", 224, 4.0),
    ],
)
def test_eps_scaling_rules_give_the_documented_radius(rule, size, radius):
    cfg = load_config("tiny", [f"adversary.eps_scaling={rule}", f"data.image_size={size}"])
    assert cfg.eps_l2(4) == pytest.approx(radius, rel=1e-12)
    # the per-value RMS of a perturbation at the radius: the paper's under "side"
    rms = cfg.eps_l2(4) / (3 * size * size) ** 0.5
    paper_rms = 4 / (3 * 224 * 224) ** 0.5
    assert rms == pytest.approx(paper_rms * (1 if rule == "side" else size / 224))


def test_eps_scaling_rule_is_validated():
    with pytest.raises(ConfigError, match="adversary.eps_scaling"):
        load_config("tiny", ["adversary.eps_scaling=area"])


def test_overrides_are_typed():
    cfg = load_config("tiny", ["train.phase2.epochs=3", "data.classes=[a, b]", "train.phase1.lr=1e-4"])
    assert cfg.train.phase2.epochs == 3
    assert cfg.data.classes == ["a", "b"]
    assert cfg.train.phase1.lr == 1e-4
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


@pytest.mark.parametrize(
    "override, culprit",
    [
        ("data.foo=1", "data.foo"),
        ("train.phase1.epochs=1.5", "train.phase1.epochs"),
        ("data.image_size=8", "data.image_size"),
        ("adversary.steps=0", "adversary.steps"),
        ("data.split_by=patient", "data.split_by"),
        ("data.classes=[a]", "data.classes"),
        ("augment.hflip=maybe", "augment.hflip"),
        ("models=[{name: a, eps: -1}]", "eps"),
        ("models=[{name: ../x, eps: 1}]", "models.name"),
    ],
)
def test_bad_values_name_the_key(override, culprit):
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")):
        load_config("tiny", [override])


def test_unknown_preset_lists_presets(tmp_path):
    with pytest.raises(ConfigError, match="presets: .*quick"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_yaml_file_with_base(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base: tiny\ntrain:\n  phase2:\n    epochs: 4\n")
    cfg = load_config(f)
    assert cfg.name == "tiny" and cfg.train.phase2.epochs == 4 and cfg.data.image_size == 32


def test_round_trip_through_dict():
    cfg = load_config("quick")
    assert from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", ["../../x", "/abs/dir", "a/b", "..", ""])
def test_config_name_is_a_plain_name_never_a_path(name):
    with pytest.raises(ConfigError, match=r"^name: .*plain name"):
        load_config("tiny", [f"name={name}"])


def test_a_path_as_config_name_writes_nothing_outside_the_runs_folder(tmp_path, monkeypatch, capsys):
    from robsal.cli import main

    work = tmp_path / "work"
    work.mkdir()
    cfg = work / "evil.yaml"
    cfg.write_text("base: tiny\nname: ../../escaped\n")
    monkeypatch.chdir(work)
    for cmd in (["run"], ["sweep", "--grid", "eps=0,4"]):
        assert main([*cmd, "--config", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "name:" in err and "--out" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.yaml", "work"]


@pytest.mark.parametrize("override, key", [("data.image_size=100000", "data.image_size"),
                                           ("data.synth.size=99999", "data.synth.size"),
                                           ("data.synth.n=10000000000", "data.synth.n")])
def test_sizes_have_an_upper_bound(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}: must be <="):
        load_config("tiny", [override])


@pytest.mark.parametrize("device", ["meta", "xla", "cuda:99"])
def test_unsupported_or_absent_devices_are_config_errors(device):
    from robsal.utils import resolve_device

    with pytest.raises(ConfigError, match="device"):
        resolve_device(device)


def test_a_decompression_bomb_is_a_one_line_data_error(tmp_path, monkeypatch):
    from PIL import Image

    from robsal.data.cache import load_image
    from robsal.errors import DataError

    path = tmp_path / "bomb.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)  # > 2x the limit: Pillow raises
    with pytest.raises(DataError, match="bomb.png: cannot read image"):
        load_image(path, 16)
