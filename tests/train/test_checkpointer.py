"""The checkpointer with fakes, no trainer: what it saves, what resume and rollback bring back, when a save is due."""
from __future__ import annotations

import pytest
import torch

from gandist.checkpoint import CheckpointStore
from gandist.errors import CheckpointError
from gandist.train.state import Checkpointer, GlobalRng, Part, StatefulList


class Box:
    """A stateful value; a dict state updates its keys (a rollback leaves out the keys it keeps)."""

    def __init__(self, value):
        self.value = value

    def state_dict(self):
        return dict(self.value) if isinstance(self.value, dict) else self.value

    def load_state_dict(self, state):
        self.value = {**self.value, **state} if isinstance(state, dict) else state


class FakeStrategy:
    """One process: collectives are identities; weights are one tensor per net."""

    rank, world_size = 0, 1

    def __init__(self):
        self.w = torch.zeros(3)

    def state_dict(self):
        return {"G": {"w": self.w.clone()}, "D": {"w": -self.w}, "optim": {}}, {"moments": self.w * 2}

    def load_state_dict(self, shared, per_rank):
        self.w = shared["G"]["w"].clone()
        self.loaded_rank_state = per_rank

    def all_gather_object(self, obj):
        return [obj]

    def broadcast_object(self, obj):
        return obj


def make(tmp_path, world_size=1, **kwargs):
    strategy = FakeStrategy()
    strategy.world_size = world_size
    parts = {"loop": Box({"step": 0, "images_seen": 0, "noise_epoch": 0, "lr_factor": 1.0, "r1_factor": 1.0,
                          "rollbacks": []}),
             "watchdog": Box({"history": [1]}), "penalty": Box({"pl_mean": torch.tensor(0.5)}),
             "data": Box({"position": 0}), "rng": GlobalRng()}
    healthy = kwargs.pop("healthy", lambda step: True)
    ckpt = Checkpointer(
        CheckpointStore(str(tmp_path / "ckpt"), keep_last=10), strategy, every=5, last_step=12,
        shared={"loop": Part(parts["loop"], kept_on_rollback=("rollbacks",)),
                "penalties": Part(StatefulList([parts["penalty"]])),
                "watchdog": Part(parts["watchdog"], on_rollback=False), "G_ema": Part(None)},
        per_rank={"data": parts["data"], "rng": parts["rng"]}, fallback={"data": "data0"},
        constants={"config": {"name": "fake"}, "data_info": {"shape": [2], "num_classes": 0, "value_range": [-1, 1]}},
        meta={"arch": "mlp"}, healthy=healthy, **kwargs)
    return ckpt, strategy, parts


def advance(strategy, parts, step, rollbacks=()):
    strategy.w = torch.full((3,), float(step))
    parts["loop"].value = {**parts["loop"].value, "step": step, "rollbacks": list(rollbacks)}
    parts["watchdog"].value = {"history": [step]}
    parts["penalty"].value = {"pl_mean": torch.tensor(float(step))}
    parts["data"].value = {"position": step * 10}
    torch.manual_seed(step)


def test_a_save_is_due_every_k_steps_and_at_the_last_step(tmp_path):
    ckpt, _, _ = make(tmp_path)
    assert [s for s in range(1, 13) if ckpt.due(s)] == [5, 10, 12]


def test_resume_brings_back_every_part_it_was_handed(tmp_path):
    ckpt, strategy, parts = make(tmp_path)
    advance(strategy, parts, 5, rollbacks=[{"at": 3}])
    saved = ckpt.save(5)
    assert saved.healthy and saved.url.endswith("step-00000005")
    expected_draw = torch.rand(4)  # what torch's RNG gives after the saved state
    again, strategy2, parts2 = make(tmp_path)
    assert again.resume() == 5
    assert torch.equal(torch.rand(4), expected_draw)
    assert torch.equal(strategy2.w, torch.full((3,), 5.0))
    assert torch.equal(strategy2.loaded_rank_state["moments"], torch.full((3,), 10.0))
    assert parts2["loop"].value["step"] == 5 and parts2["loop"].value["rollbacks"] == [{"at": 3}]
    assert parts2["watchdog"].value == {"history": [5]}
    assert float(parts2["penalty"].value["pl_mean"]) == 5.0
    assert parts2["data"].value == {"position": 50}


def test_rollback_restores_training_state_but_keeps_history_and_skips_unhealthy(tmp_path):
    unhealthy = {10}
    ckpt, strategy, parts = make(tmp_path, healthy=lambda step: step not in unhealthy)
    advance(strategy, parts, 5)
    ckpt.save(5)
    advance(strategy, parts, 10, rollbacks=[{"at": 7}])
    ckpt.save(10)  # not healthy: a rollback must not land here
    advance(strategy, parts, 11, rollbacks=[{"at": 7}, {"at": 11}])
    assert ckpt.restore_healthy(at_most=11) == 5
    assert torch.equal(strategy.w, torch.full((3,), 5.0))
    assert parts["loop"].value["step"] == 5
    assert parts["loop"].value["rollbacks"] == [{"at": 7}, {"at": 11}]  # kept_on_rollback
    assert parts["watchdog"].value == {"history": [11]}  # on_rollback=False: the watchdog keeps what it saw
    assert parts["data"].value == {"position": 50}


def test_another_world_size_takes_the_shared_data_position_and_leaves_the_rng(tmp_path):
    ckpt, strategy, parts = make(tmp_path)
    advance(strategy, parts, 5)
    ckpt.save(5)
    saved_draw = torch.rand(4)
    torch.manual_seed(99)
    own_draw = torch.rand(4)
    torch.manual_seed(99)
    resized, _, parts2 = make(tmp_path, world_size=2)
    assert resized.resume() == 5
    assert parts2["data"].value == {"position": 50}  # rank 0's copy, from shared.pt
    draw = torch.rand(4)  # another world size: a rank's RNG file is not its own, so the RNG is left alone
    assert torch.equal(draw, own_draw) and not torch.equal(draw, saved_draw)


def test_a_process_that_lost_its_lease_writes_nothing(tmp_path):
    def lost():
        raise CheckpointError("lease taken over")

    ckpt, strategy, parts = make(tmp_path, before_save=lost)
    with pytest.raises(CheckpointError, match="lease taken over"):
        ckpt.save(5)
    assert CheckpointStore(str(tmp_path / "ckpt")).steps() == []


def test_a_checkpoint_of_another_arch_is_refused(tmp_path):
    ckpt, strategy, parts = make(tmp_path)
    ckpt.save(5)
    other, _, _ = make(tmp_path)
    other.meta = {"arch": "dcgan"}
    with pytest.raises(CheckpointError, match="holds a mlp model, the config builds dcgan"):
        other.resume()
