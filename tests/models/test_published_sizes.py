"""Each published config builds nets with the published (or reference-implementation) parameter counts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gandist.cli import main
from gandist.config import load_config
from gandist.models.base import count_params
from gandist.models.info import build_models, data_info_from_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# (config, G params, D params, where the numbers come from)
PUBLISHED = [
    ("biggan_128.yaml", 70_433_988, 87_982_370, "BigGAN-PyTorch bs256x8 (issue 3)"),
    ("stylegan2_1024.yaml", 30_370_060, 29_012_513, "stylegan2-ada-pytorch config-f 1024"),
    ("stylegan2_256_auto.yaml", 23_191_522, 24_001_089, "stylegan2-ada-pytorch auto @256 (map 2, cbase 16384)"),
    ("stylegan2_256.yaml", 30_034_338, 28_864_129, "stylegan2-ada-pytorch config-f layout at 256"),
    ("biggan_deep_256.yaml", 55_736_708, 38_247_426, "BigGAN-PyTorch BigGANdeep.py layout, ch 128"),
    ("biggan_32.yaml", 4_304_387, 4_207_361, "BigGAN-PyTorch launch_cifar_ema.sh layout"),
]


@pytest.mark.parametrize("name,g_params,d_params,source", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_published_config_builds_published_parameter_counts(name, g_params, d_params, source):
    cfg = load_config(CONFIGS / name)
    G, D = build_models(cfg)
    assert (count_params(G), count_params(D)) == (g_params, d_params), source


def test_biggan_deep_256_is_within_a_third_of_a_percent_of_the_tf_hub_model():
    # the paper's released BigGAN-deep 256 generator has 55.9M parameters (rounded, TF variables)
    G, _ = build_models(load_config(CONFIGS / "biggan_deep_256.yaml"))
    assert abs(count_params(G) - 55.9e6) / 55.9e6 < 0.0035


def test_each_mapping_layer_adds_one_512_by_512_layer_with_bias():
    # paper256 (cbase 16384, map 8) differs from auto only by 6 mapping layers; D has no mapping when unconditional
    cfg = load_config(CONFIGS / "stylegan2_256_auto.yaml", ["model.mapping_layers=8"])
    G, D = build_models(cfg)
    assert count_params(G) == 23_191_522 + 6 * (512 * 512 + 512) == 24_767_458
    assert count_params(D) == 24_001_089


def test_meta_build_counts_equal_a_real_build():
    cfg = load_config(CONFIGS / "biggan_32.yaml", ["model.ch=16", "model.d_ch=16"])
    info = data_info_from_config(cfg.data)
    meta_g, meta_d = build_models(cfg, info, meta=True)
    real_g, real_d = build_models(cfg, info, meta=False)
    assert count_params(real_g) == count_params(meta_g) > 0
    assert count_params(real_d) == count_params(meta_d) > 0
    assert not any(p.is_meta for p in real_g.parameters())


def test_gandist_info_json_reports_params_blocks_and_flops(capsys):
    assert main(["info", str(CONFIGS / "biggan_128.yaml"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["G"]["params"] == 70_433_988 and info["D"]["params"] == 87_982_370
    assert sum(info["G"]["blocks"].values()) == info["G"]["params"]
    assert sum(info["D"]["blocks"].values()) == info["D"]["params"]
    assert info["G"]["resolution"] == 128
    # ~21 GMACs per 128 px image in G's convolutions: between 10 and 100 GFLOPs (2 per MAC)
    assert 10e9 < info["G"]["flops_per_image"] < 100e9
    assert info["data"] == {"shape": [3, 128, 128], "num_classes": 1000}


def test_gandist_info_table_lists_blocks_with_overrides(capsys):
    assert main(["info", str(CONFIGS / "stylegan2_tiny_digits.yaml"), "--set", "model.channel_max=32"]) == 0
    out = capsys.readouterr().out
    assert "G:" in out and "D:" in out and "synthesis.blocks.2:SynthesisBlock@16px" in out


def test_data_info_is_derived_without_opening_data():
    cfg = load_config(CONFIGS / "biggan_128.yaml")
    info = data_info_from_config(cfg.data)  # the bucket is a placeholder: nothing may be opened
    assert info.shape == (3, 128, 128) and info.num_classes == 1000
    digits = data_info_from_config(load_config(CONFIGS / "stylegan2_tiny_digits.yaml").data)
    assert digits.shape == (1, 16, 16) and digits.num_classes == 10


@pytest.mark.parametrize("name", ["demo_digits.yaml", "ring8.yaml", "biggan_tiny_digits.yaml"])
def test_gandist_info_counts_the_small_archs_and_packed_d_too(name, capsys):
    assert main(["info", str(CONFIGS / name), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    cfg = load_config(CONFIGS / name)
    from gandist.models.info import build_models as real_build

    G, D = real_build(cfg, meta=False)
    assert info["G"]["params"] == count_params(G) > 0 and info["D"]["params"] == count_params(D) > 0
