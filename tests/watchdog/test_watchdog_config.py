"""Watchdog settings that cannot work are rejected with a message naming the key and the fix."""
import pytest

from gandist.config import ConfigError, config_from_dict, load_config


def test_defaults_validate_and_inject_is_off():
    cfg = config_from_dict({})
    assert cfg.watchdog.enabled and cfg.watchdog.inject.kind == "none"
    assert cfg.watchdog.sigma_growth.window >= 2 * cfg.watchdog.sigma_every


def test_window_smaller_than_check_interval_is_rejected():
    with pytest.raises(ConfigError, match=r"sigma_growth.window \(15\) must be at least twice watchdog.sigma_every \(10\)"):
        config_from_dict({"watchdog": {"sigma_growth": {"window": 15}}})


def test_spike_min_history_past_window_is_rejected():
    with pytest.raises(ConfigError, match="min_history"):
        config_from_dict({"watchdog": {"spike": {"window": 20, "min_history": 50}}})


@pytest.mark.parametrize("key", ["mitigation.lr_scale", "spike.k", "inject.factor", "d_overpower.bound",
                                 "mitigation.r1_scale"])
def test_factor_not_positive_is_rejected(key):
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        load_config(None, [f"watchdog.{key}=0"])


def test_misspelt_detector_key_is_rejected():
    with pytest.raises(ConfigError, match="patiense"):
        load_config(None, ["watchdog.spike.patiense=3"])


def test_overrides_reach_the_detectors():
    cfg = load_config(None, ["watchdog.max_rollbacks=1", "watchdog.inject.kind=nan", "watchdog.inject.step=7",
                             "watchdog.mitigation.skip_batches=4"])
    assert cfg.watchdog.max_rollbacks == 1 and cfg.watchdog.inject.step == 7
    assert cfg.watchdog.mitigation.skip_batches == 4
