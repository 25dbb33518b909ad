"""The config tree: defaults, YAML files, dotted overrides with type coercion, save/load round trip."""
from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import pytest
import yaml

from src.config import (
    AugmentConfig, Config, ConfigError, DataConfig, RVQConfig, apply_overrides, from_dict, load_config,
    parse_scalar, save_config, to_dict,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def nested_keys(mapping: dict, prefix: str = "") -> set[str]:
    """Dotted paths of every leaf; a dict-typed field (stream_weights) counts as one leaf plus its keys."""
    out = set()
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        out.add(path)
        if isinstance(value, dict):
            out |= nested_keys(value, path + ".")
    return out


# ---------------------------------------------------------------------------- files


def test_defaults_are_the_dataclass_tree():
    cfg = load_config()
    assert cfg == Config()
    assert isinstance(cfg.data.augment, AugmentConfig) and isinstance(cfg.model.rvq, RVQConfig)
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.loss.stream_weights == {"F": 1.0, "LH": 1.0, "RH": 1.0, "B": 1.0, "FB": 1.0}
    # default_factory: two configs never share a nested object
    a, b = Config(), Config()
    a.loss.stream_weights["F"] = 2.0
    a.data.augment.mirror = False
    assert b.loss.stream_weights["F"] == 1.0 and b.data.augment.mirror is True


def test_default_yaml_equals_dataclass_defaults():
    assert load_config(CONFIGS / "default.yaml") == Config()


def test_default_yaml_lists_every_key():
    with open(CONFIGS / "default.yaml") as f:
        listed = nested_keys(yaml.safe_load(f))
    assert listed == nested_keys(dataclasses.asdict(Config()))


def test_tiny_yaml_overrides_only_what_it_lists():
    cfg = load_config(CONFIGS / "tiny.yaml")
    assert cfg.experiment_name == "tiny"
    assert (cfg.model.width, cfg.model.rvq.levels, cfg.model.rvq.codebook_size) == (64, 2, 64)
    assert cfg.train.epochs == 2 and cfg.data.max_frames == 60
    # keys tiny.yaml leaves out keep their defaults, also inside a partly given section
    assert cfg.model.rvq.ema_decay == RVQConfig().ema_decay
    assert cfg.data.augment == AugmentConfig() and cfg.data.chunk_len == DataConfig().chunk_len


def test_missing_file_and_unknown_key_in_file_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert str(bad) in str(e.value) and "train.lrr" in str(e.value) and "lr" in str(e.value)


# ---------------------------------------------------------------------------- round trip


def test_yaml_save_load_round_trip(tmp_path):
    cfg = load_config(CONFIGS / "tiny.yaml", [
        "data.augment.mirror=false", "data.augment.time_warp_max=0.35", "model.rvq.laplace_eps=1e-7",
        "model.rvq.distance=cosine", "loss.stream_weights.LH=2.5", "loss.stream_weights.FB=0",
        "train.batch_size=auto", "train.lr=1.5e-4", "experiment_name=no", "data.pack_dir=",
        "model.pool={F: attention, LH: flatten, RH: flatten, B: attention, FB: mean}",
    ])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert again.loss.stream_weights == {"F": 1.0, "LH": 2.5, "RH": 1.0, "B": 1.0, "FB": 0.0}
    assert again.model.rvq.laplace_eps == 1e-7 and again.data.augment.mirror is False
    assert again.experiment_name == "no" and again.train.batch_size == "auto" and again.data.pack_dir == ""
    assert again.model.pool == {"F": "attention", "LH": "flatten", "RH": "flatten", "B": "attention", "FB": "mean"}
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, no temp file left
    assert from_dict(to_dict(cfg)) == cfg


# ---------------------------------------------------------------------------- overrides


@pytest.mark.parametrize("override, key, value, typ", [
    ("train.lr=1e-4", "train.lr", 1e-4, float),            # PyYAML alone reads this as a string
    ("train.lr=3", "train.lr", 3.0, float),                 # an int is widened for a float field
    ("train.epochs=7", "train.epochs", 7, int),
    ("train.epochs=1e2", "train.epochs", 100, int),         # a whole float is fine for an int field
    ("data.augment.mirror=false", "data.augment.mirror", False, bool),
    ("data.augment.mirror=True", "data.augment.mirror", True, bool),
    ("train.batch_size=auto", "train.batch_size", "auto", str),
    ("train.batch_size=16", "train.batch_size", 16, int),  # int | str: an int stays an int
    ("experiment_name=no", "experiment_name", "no", str),   # YAML 1.1 would make this False
    ("experiment_name=on", "experiment_name", "on", str),
    ("experiment_name=123", "experiment_name", "123", str),
    ("data.root=/data/CSL-Daily", "data.root", "/data/CSL-Daily", str),
    ("model.rvq.codebook_size=512", "model.rvq.codebook_size", 512, int),
])
def test_override_coercion(override, key, value, typ):
    cfg = apply_overrides(Config(), [override])
    got = cfg
    for part in key.split("."):
        got = getattr(got, part)
    assert got == value and type(got) is typ


def test_overrides_apply_in_order_and_keep_other_dict_keys():
    cfg = apply_overrides(Config(), ["train.lr=1e-3", "train.lr=2e-3", "loss.stream_weights.RH=3"])
    assert cfg.train.lr == 2e-3
    assert cfg.loss.stream_weights == {"F": 1.0, "LH": 1.0, "RH": 3.0, "B": 1.0, "FB": 1.0}
    assert isinstance(cfg.loss.stream_weights["RH"], float)


def test_cli_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1.0e-3\n  epochs: 5\n")
    cfg = load_config(path, ["train.epochs=9"])
    assert (cfg.train.lr, cfg.train.epochs) == (1e-3, 9)


def test_yaml_scalars_follow_yaml_1_2():
    assert parse_scalar("1e-4") == 1e-4 and parse_scalar("no") == "no" and parse_scalar("off") == "off"
    assert parse_scalar("false") is False and parse_scalar("") == ""


def test_batch_size_accepts_ints_and_auto_only():
    """The field is ``int | Literal["auto"]``: any other string fails at load, naming the key;
    a non-positive int is rejected by the trainer that resolves the size."""
    import torch

    from src.train.loop import Trainer

    assert apply_overrides(Config(), ["train.batch_size=auto"]).train.batch_size == "auto"
    assert apply_overrides(Config(), ["train.batch_size=8"]).train.batch_size == 8
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected int or 'auto'"):
        apply_overrides(Config(), ["train.batch_size=abc"])
    trainer = types.SimpleNamespace(cfg=apply_overrides(Config(), ["train.batch_size=0"]),
                                    device=torch.device("cpu"))
    with pytest.raises(ValueError, match="train.batch_size"):
        Trainer._batch_size(trainer)
    trainer.cfg = apply_overrides(Config(), ["train.batch_size=auto"])
    assert Trainer._batch_size(trainer) == 32  # auto needs CUDA; the CPU fallback


@pytest.mark.parametrize("override, named, suggested", [
    ("train.lrr=1e-4", "train.lrr", "lr"),
    ("trian.lr=1e-4", "trian", "train"),
    ("data.augment.mirrror=false", "data.augment.mirrror", "mirror"),
    ("model.rvq.codebook_sise=8", "model.rvq.codebook_sise", "codebook_size"),
    ("loss.stream_weights.LHH=2", "loss.stream_weights.LHH", "LH"),
])
def test_unknown_key_names_it_and_suggests_the_close_match(override, named, suggested):
    with pytest.raises(ConfigError) as e:
        apply_overrides(Config(), [override])
    msg = str(e.value)
    assert f"'{named}'" in msg and "did you mean" in msg and suggested in msg.split("did you mean")[1]


@pytest.mark.parametrize("override, key", [
    ("train.epochs=abc", "train.epochs"),
    ("train.epochs=1.5", "train.epochs"),
    ("train.lr=fast", "train.lr"),
    ("data.augment.mirror=yes", "data.augment.mirror"),   # only true/false are booleans
    ("data.augment.mirror=1", "data.augment.mirror"),
    ("train.amp=no", "train.amp"),
    ("data.augment=3", "data.augment"),                   # a section needs a mapping
    ("loss.stream_weights.F=heavy", "loss.stream_weights.F"),
    ("train.seed=true", "train.seed"),                    # a bool is not an int
])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        apply_overrides(Config(), [override])
    assert str(e.value).startswith(key)


def test_override_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(Config(), ["train.lr"])


def test_configs_are_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("configs/demo.yaml").experiment_name == "demo"
    with pytest.raises(ConfigError, match="nope.yaml.*nor"):
        load_config("configs/nope.yaml")


def test_threads_setting_and_flag(monkeypatch):
    import torch

    from src import cli
    from src.runtime import set_threads

    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 == torch.get_num_threads()
        assert set_threads(0) == 1  # 0 leaves the count as it is
        with pytest.raises(ConfigError, match="threads"):
            set_threads(-1)
    finally:
        torch.set_num_threads(before)
    p = cli.parser("x", "a command with a config")
    cli.add_config_args(p)
    cli.add_threads_arg(p)
    p.add_argument("--root")
    # overrides before, between and after the options
    args = p.parse_args(["--config", "configs/tiny.yaml", "threads=3", "--threads", "2", "train.epochs=5",
                         "--root", "R", "train.lr=0.5"])
    cfg = cli.config_from_args(args)
    assert cfg.threads == 2 and cfg.data.root == "R"  # the flags win over the overrides
    assert (cfg.train.epochs, cfg.train.lr) == (5, 0.5)
    assert load_config(CONFIGS / "tiny.yaml").threads == 0


def test_fsq_levels_must_multiply_to_the_codebook_size():
    cfg = load_config(None, ["model.rvq.fsq_streams=[F]", "model.rvq.fsq_levels=[8,5,5,5]",
                             "model.rvq.codebook_size=1000"])
    assert cfg.model.rvq.fsq_levels == [8, 5, 5, 5] and cfg.model.rvq.fsq_streams == ["F"]
    with pytest.raises(ConfigError, match="model.rvq.fsq_levels.*product is model.rvq.codebook_size"):
        load_config(None, ["model.rvq.fsq_streams=[F]", "model.rvq.fsq_levels=[8,5,5,5]"])
    assert load_config(None, ["model.rvq.codebook_size=512"]).model.rvq.fsq_grid == [4, 4, 4, 4, 2]
    assert load_config(None, ["model.rvq.fsq_streams=[]", "model.rvq.codebook_size=1000"]).model.rvq.fsq_grid == []
    with pytest.raises(ConfigError, match="model.rvq.fsq_levels.*product.*power-of-two"):
        load_config(None, ["model.rvq.codebook_size=1000"])
    with pytest.raises(ConfigError, match="model.rvq.fsq_streams.*stream names"):
        load_config(None, ["model.rvq.fsq_streams=[face]"])
    with pytest.raises(ConfigError, match=r"model.rvq.fsq_levels\[1\]: expected int"):
        load_config(None, ["model.rvq.fsq_levels=[8,x]"])


def test_depth_settings_read_one_value_or_one_per_stream_and_refuse_the_rest():
    """export.depth_threshold as one value or per stream (in the file, on the command line and
    as eval-rvq's --depth-threshold), each checked; export.hand_codes 0 or >= 2."""
    from src.config import depth_thresholds, validate
    from src.inference import depth_setting

    cfg = Config()
    assert depth_thresholds(cfg) is None                                       # adaptive_depth off
    on = apply_overrides(Config(), ["export.adaptive_depth=true", "export.depth_threshold={LH: 0.3}"])
    assert depth_thresholds(validate(on)) == {"LH": 0.3}
    every = depth_setting(cfg, "0.2")
    assert every.adaptive_depth and every.depth_threshold == 0.2
    assert depth_setting(cfg, "LH=0.32, RH=0.3").depth_threshold == {"LH": 0.32, "RH": 0.3}
    assert depth_setting(on, "off").adaptive_depth is False
    for bad in ("LH=x", "XX=0.3", "-1", "LH=-0.1"):
        with pytest.raises(ConfigError):
            depth_setting(cfg, bad)
    with pytest.raises(ConfigError, match="export.hand_codes"):
        validate(apply_overrides(Config(), ["export.hand_codes=1"]))
