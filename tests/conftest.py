import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _dgan_cache(tmp_path_factory):
    """Built-in shards and cached artefacts go to a per-session directory, not ~/.cache."""
    os.environ["DGAN_CACHE"] = str(tmp_path_factory.mktemp("dgan-cache"))
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
