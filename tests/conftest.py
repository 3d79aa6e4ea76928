"""Shared test settings: CPU only, DeepSpeed on CPU, one intra-op thread (the machine has 2 cores)."""
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GANDIST_TEST", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Tests that start a Ray cluster run one after another in one xdist worker (Ray's ports are global)."""
    import pytest

    for item in items:
        if f"{os.sep}orchestrate{os.sep}" in str(item.fspath):
            item.add_marker(pytest.mark.xdist_group("ray"))
