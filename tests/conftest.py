import os

import pytest
import torch


MAX_WORKERS = 8


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): one worker per core, at most MAX_WORKERS."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def pytest_configure(config):
    # Under xdist each worker gets its share of the cores for torch's intra-op threads
    # (the suite's tensors are small: workers side by side beat threads within one).
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session", autouse=True)
def _dgan_cache(tmp_path_factory):
    """Built-in shards and cached artefacts go to a per-session directory, not ~/.cache;
    under xdist one directory shared by the workers (every cache write is atomic: a temp
    file or folder renamed into place)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's root, above the workers' own folders
    cache = base / "dgan-cache"
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["DGAN_CACHE"] = str(cache)
    yield


# The files that take longest (seconds on the 2-core CI machine, serial): collected first,
# so that under xdist (`-n auto --dist loadfile`, the README's test command) they start at
# once and the short files fill the other workers around them instead of one long file
# starting last.
SLOWEST_FILES = ("test_launch.py", "test_stylegan2_train.py", "test_demo_quality.py",
                 "test_translation_distributed.py", "test_checkpoint_resume.py",
                 "test_ops_triton.py", "test_ops_compile.py")


@pytest.fixture(autouse=True)
def _no_leaked_compile_cache():
    """A compiled in-process run points TORCHINDUCTOR_CACHE_DIR at its run directory
    (dgan.tasks.stylegan2.use_compile_cache); put the variable back after each test, or a
    later test's launched ranks would take it for one the user exported and use that cache
    instead of their own run directory's (a failure that depended on which tests an xdist
    worker had run before)."""
    import dgan.tasks.stylegan2 as sg2

    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    yield
    if before is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = before
    sg2._CACHE_SET_HERE = None


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    # stable: each file's own tests keep their order
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
