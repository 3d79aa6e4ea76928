"""Bad model configs fail before training with one clear message naming the key and the fix."""
from __future__ import annotations

import pytest

from gandist.config import ConfigError, load_config
from gandist.data.base import DataInfo

from modelkit import TINY_BIGGAN, TINY_STYLEGAN2, build


def test_biggan_rejects_an_unsupported_resolution():
    with pytest.raises(ValueError, match=r"supports resolutions \[32, 64, 128, 256, 512\], the data gives 48 px"):
        build(TINY_BIGGAN, DataInfo((3, 48, 48), 10))


def test_stylegan2_rejects_a_resolution_that_is_not_a_power_of_two():
    with pytest.raises(ValueError, match="power-of-two resolution >= 8, the data gives 24 px"):
        build(TINY_STYLEGAN2, DataInfo((3, 24, 24), 0))


def test_attention_at_a_resolution_the_net_does_not_have_is_an_error():
    with pytest.raises(ValueError, match=r"model.attention: \[128\] is not a resolution of a 64 px biggan; choose from \[8, 16, 32, 64\]"):
        build(TINY_BIGGAN + ["model.attention=[128]"], DataInfo((3, 64, 64), 10))
    with pytest.raises(ValueError, match=r"model.d_attention: \[4\]"):
        build(TINY_BIGGAN + ["model.d_attention=[4]"], DataInfo((3, 32, 32), 10))


def test_attention_resolution_must_be_a_power_of_two_at_load_time():
    with pytest.raises(ConfigError, match=r"model.attention: .*powers of two >= 4 \(like 64\), got 48"):
        load_config(None, ["model.arch=biggan", "model.attention=[48]"])


@pytest.mark.parametrize("overrides", [TINY_BIGGAN, TINY_STYLEGAN2], ids=["biggan", "stylegan2"])
def test_class_count_that_does_not_match_the_data_is_an_error(overrides):
    with pytest.raises(ValueError, match="model.num_classes is 1000 but the data has 10 classes"):
        build(overrides + ["model.num_classes=1000"], DataInfo((3, 32, 32), 10))
    G, _ = build(overrides + ["model.num_classes=10"], DataInfo((3, 32, 32), 10))
    assert G.num_classes == 10


def test_hierarchical_conditional_biggan_needs_a_shared_embedding():
    with pytest.raises(ConfigError, match="hier: true with a conditional model needs shared_dim > 0"):
        load_config(None, ["model.arch=biggan", "model.shared_dim=0"])


def test_gandist_info_reports_a_bad_config_as_one_line_exit_2(tmp_path, capsys):
    from gandist.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: {arch: biggan, attention: [128]}\ndata: {kind: digits, resolution: 32}\n")
    assert main(["info", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "model.attention: [128] is not a resolution of a 32 px biggan" in err and err.count("\n") == 1
