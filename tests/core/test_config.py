import glob
import os

import pytest

from gandist.config import ConfigError, ExperimentConfig, load_config, parse_override

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))),
                         ids=os.path.basename)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)


def test_misspelt_key_names_dotted_path_and_suggestion():
    with pytest.raises(ConfigError, match=r"train\.batch_sise: unknown key \(did you mean batch_size\?\)"):
        load_config(None, ["train.batch_sise=3"])


def test_misspelt_key_in_union_member_suggests_its_fields():
    with pytest.raises(ConfigError, match=r"model\.chh: unknown key \(did you mean ch\?\)"):
        load_config(None, ["model.arch=dcgan", "model.chh=3"])


@pytest.mark.parametrize("override,fragment", [
    ("optim.g.lr=-1", "optim.g.lr: Input should be greater than 0 (got -1)"),
    ("optim.d.betas=[0.5,1.0]", "optim.d.betas"),
    ("train.batch_size=abc", "train.batch_size"),
    ("model.arch=foo", "model:"),
    ("loss.kind=bogus", "loss.kind"),
    ("distributed.strategy=zero4", "distributed.strategy"),
])
def test_bad_values_are_rejected_with_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_overrides_are_typed():
    assert parse_override("train.steps=30") == (["train", "steps"], 30)
    assert parse_override("optim.g.lr=1e-4")[1] == pytest.approx(1e-4)
    assert parse_override("optim.g.betas=[0.0,0.99]")[1] == [0.0, 0.99]
    cfg = load_config(None, ["train.steps=30", "optim.g.lr=1e-4", "optim.g.betas=[0.0,0.99]",
                             "penalties=[{kind: r1, weight: 1.0, every: 16}]", "penalties.0.weight=2"])
    assert cfg.train.steps == 30 and cfg.optim.g.betas == (0.0, 0.99)
    assert cfg.penalties[0].kind == "r1" and cfg.penalties[0].weight == 2.0 and cfg.penalties[0].every == 16


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_pack_must_divide_batch():
    with pytest.raises(ConfigError, match="augment.pack"):
        load_config(None, ["augment.pack=3", "train.batch_size=64"])


def test_config_hash_ignores_run_length_but_not_model():
    a = load_config(None, ["train.steps=10"])
    assert a.hash() == load_config(None, ["train.steps=99"]).hash()
    assert a.hash() != load_config(None, ["model.hidden=32"]).hash()


def test_nan_and_inf_stay_strings_but_numbers_parse():
    assert parse_override("watchdog.inject.kind=nan")[1] == "nan"
    assert parse_override("x=inf")[1] == "inf"
    assert parse_override("x=-3.5E2")[1] == -350.0
    assert load_config(None, ["watchdog.inject.kind=nan"]).watchdog.inject.kind == "nan"


def test_yaml_booleans_only_from_true_and_false():
    assert parse_override("train.amp=off")[1] == "off"
    assert parse_override("train.deterministic=false")[1] is False
    assert load_config(None, ["train.amp=off", "train.ema.enabled=true"]).train.amp == "off"


def test_loading_a_config_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, gandist.config; gandist.config.load_config(None); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("overrides,fragment", [
    (["penalties=[{kind: bcr}]"], "penalties.0: bcr's transforms (translation,cutout) need images but data.kind=toy2d"),
    (["augment.diffaugment=translation"], "augment.diffaugment='translation' transforms images but data.kind=toy2d"),
    (["model.arch=dcgan"], "model.arch=dcgan needs image data but data.kind=toy2d gives 2-D points"),
    (["data.kind=digits"], "model.arch=mlp is for 2-D points but data.kind=digits gives images"),
    (["data.kind=digits", "model.arch=biggan", "data.resolution=32", "penalties=[{kind: path_length}]"],
     "penalties.0: path_length regularizes StyleGAN2's mapping/synthesis, which model.arch=biggan does not have"),
    (["penalties=[{kind: weight_clip, every: 4}]"], "penalties.0: weight_clip clamps D's weights after every D step"),
    (["data.kind=digits", "model.arch=dcgan", "penalties=[{kind: weight_clip}]"],
     "penalties.0: weight_clip on a spectrally normalized D (model.arch=dcgan) is undone by the normalization"),
    (["penalties=[{kind: gp}, {kind: weight_clip}]", "distributed.strategy=zero2"],
     "penalties.1: weight_clip clamps D's module weights, which distributed.strategy=zero2 overwrites"),
])
def test_what_does_not_fit_the_data_or_strategy_is_refused_in_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert fragment in message and "\n" not in message and "Value error" not in message, message


def test_a_penalty_that_does_not_fit_the_data_exits_2_before_writing_the_run_dir(cli, tmp_path):
    run_dir = tmp_path / "run"
    proc = cli("train", "configs/toy_ring8_tiny.yaml", "--set", "penalties=[{kind: bcr}]", "--run-dir", run_dir,
               check_rc=2)
    assert "penalties.0: bcr" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and not run_dir.exists()
