"""Shared test settings: CPU only, DeepSpeed on CPU, one intra-op thread (the machine has 2 cores)."""
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GANDIST_TEST", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
