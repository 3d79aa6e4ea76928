"""Optional TensorBoard writer: scalars land in event files that TensorBoard itself reads back."""
from __future__ import annotations

import logging

import pytest

from gandist.telemetry import tensorboard as tb
from gandist.train.signals import Signals


def test_missing_tensorboard_gives_no_sink_instead_of_an_error(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(tb, "tensorboard_available", lambda: False)
    # another test in this worker may have run a logging.config.dictConfig (Ray, moto's server) that disables
    # loggers created before it: the module's logger must be live for caplog to see its line
    monkeypatch.setattr(tb.log, "disabled", False)
    monkeypatch.setattr(tb.log, "propagate", True)
    with caplog.at_level(logging.WARNING, logger=tb.log.name):
        assert tb.make_tensorboard_sink(str(tmp_path)) is None
    assert "pip install tensorboard" in caplog.text


def test_scalars_are_written_every_k_steps_and_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is optional (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = tb.make_tensorboard_sink(str(tmp_path), every=2)
    for step in range(1, 7):
        sink.publish(Signals(step=step, losses={"G": step / 10, "D/r1": 0.5}, d_real=1.0, d_fake=-1.0,
                             grad_norm={"D": 2.0}, sigma={"D/a": 3.0, "D/b": 5.0}, img_per_sec=100.0))
    sink.event({"event": "rollback", "step": 4, "reason": "nan"})
    sink.checkpoint_saved(6, 0.25)
    sink.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("loss/G")
    assert [e.step for e in loss] == [2, 4, 6]
    assert [round(e.value, 6) for e in loss] == [0.2, 0.4, 0.6]
    assert acc.Scalars("regularizer/D/r1")[0].value == 0.5
    assert acc.Scalars("sigma_max/D")[0].value == 5.0
    assert acc.Scalars("checkpoint/seconds")[0].value == 0.25
