"""Node-aware ranks: what a Ray Train worker exports from its context, and what the strategies read back."""
from __future__ import annotations

import pytest

from gandist.errors import UserError
from gandist.orchestrate.ray_train import rank_environment
from gandist.strategies.dist_env import node_position


class FakeContext:
    """Ray Train's TrainContext getters for one worker of a group laid out as `nodes` (workers per node)."""

    def __init__(self, nodes: list[int], world_rank: int):
        self.nodes, self.world_rank = nodes, world_rank
        starts = [sum(nodes[:i]) for i in range(len(nodes))]
        self.node = max(i for i, start in enumerate(starts) if start <= world_rank)
        self.local = world_rank - starts[self.node]

    def get_world_rank(self): return self.world_rank
    def get_world_size(self): return sum(self.nodes)
    def get_local_rank(self): return self.local
    def get_local_world_size(self): return self.nodes[self.node]
    def get_node_rank(self): return self.node


def test_workers_spanning_nodes_get_their_node_and_local_rank():
    # 5 workers: 2 on node 0, 3 on node 1 (an elastic group after a resize need not be uniform)
    seen = [node_position(rank_environment(FakeContext([2, 3], r))) for r in range(5)]
    assert seen == [(0, 2, 0), (1, 2, 0), (0, 3, 1), (1, 3, 1), (2, 3, 1)]
    env = rank_environment(FakeContext([2, 3], 3))
    assert env["RANK"] == "3" and env["WORLD_SIZE"] == "5"


def test_one_worker_per_node_has_local_rank_zero_everywhere():
    assert [node_position(rank_environment(FakeContext([1, 1], r))) for r in range(2)] == [(0, 1, 0), (0, 1, 1)]


def test_torchrun_names_and_defaults():
    assert node_position({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "2"}) == (1, 4, 2)
    assert node_position({}) == (0, 1, 0)
    assert node_position({"LOCAL_RANK": "3"}) == (3, 4, 0)  # no local world size given: at least local rank + 1


def test_inconsistent_or_garbled_ranks_are_one_line_errors():
    with pytest.raises(UserError, match="LOCAL_RANK=2 but LOCAL_WORLD_SIZE=2"):
        node_position({"LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="NODE_RANK='x'"):
        node_position({"NODE_RANK": "x"})
