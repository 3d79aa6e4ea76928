"""Build pytorch-fid's own FID InceptionV3 (the installed `pytorch_fid.inception` module, unmodified) without
torchvision and without a download.

pytorch_fid/inception.py uses four things from torchvision: `__version__`, `models.inception_v3`,
`models.inception.{InceptionA, InceptionC, InceptionE}` (it subclasses them) and `models.utils.
load_state_dict_from_url` (its weight download). The first three come from torchvision's real inception source,
vendored beside this file; the last is replaced by a function that hands back the state dict the test supplies, so
pytorch-fid's `fid_inception_v3()` runs its own `load_state_dict` (strict) on it and nothing touches the network.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

VENDORED = Path(__file__).with_name("torchvision_inception.py")
TORCHVISION_VERSION = "0.29.1"  # the release the vendored file comes from; pytorch-fid branches on it


def _vendored_inception() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("torchvision.models.inception", VENDORED)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_pytorch_fid_inception(state_dict: dict, monkeypatch) -> tuple[types.ModuleType, list[str]]:
    """(pytorch_fid.inception imported against the shim, URLs it asked for); the shim lives for one test."""
    inception = _vendored_inception()
    requested: list[str] = []

    def load_state_dict_from_url(url, *args, **kwargs):
        requested.append(url)  # pytorch-fid would download here; the test's weights stand in for the file
        return {k: v.clone() for k, v in state_dict.items()}

    torchvision = types.ModuleType("torchvision")
    torchvision.__version__ = TORCHVISION_VERSION
    models = types.ModuleType("torchvision.models")
    models.inception = inception
    models.inception_v3 = inception.inception_v3
    utils = types.ModuleType("torchvision.models.utils")
    utils.load_state_dict_from_url = load_state_dict_from_url
    models.utils = utils
    torchvision.models = models
    for name, module in {"torchvision": torchvision, "torchvision.models": models,
                         "torchvision.models.inception": inception, "torchvision.models.utils": utils}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "pytorch_fid.inception", raising=False)
    return importlib.import_module("pytorch_fid.inception"), requested
