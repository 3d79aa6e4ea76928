"""Shared test settings: CPU only, DeepSpeed on CPU, one intra-op thread (the machine has 2 cores)."""
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GANDIST_TEST", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


# tryfirst: xdist's own collection hook turns xdist_group marks into the @group node-id suffix that --dist loadgroup
# schedules by, so the mark must be there before it runs. Even so, CI logs still show one Ray cluster per xdist
# worker; the Ray fixture therefore puts every port on a free one, so two clusters on one machine do not collide
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Tests that start a Ray cluster run one after another in one xdist worker (Ray's ports are global)."""
    for item in items:
        if f"{os.sep}orchestrate{os.sep}" in str(item.fspath):
            item.add_marker(pytest.mark.xdist_group("ray"))
