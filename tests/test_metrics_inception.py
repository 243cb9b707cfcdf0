"""The FID Inception-v3: architecture, weights-file handling, forward shape.

No real weights exist on test machines (and dgan never downloads them), so these tests
check the architecture against the layout of the published state dict and the error
paths; FID parity with published numbers needs the real file (docs/metrics.md).
"""

import pytest
import torch

from dgan.metrics import WEIGHTS_ENV, WEIGHTS_FILE, InceptionV3FID, InceptionWeightsMissing
from dgan.metrics.inception import InceptionV3Network


@pytest.fixture(scope="module")
def random_state(tmp_path_factory):
    """A state dict of the architecture with random weights, saved like the real file."""
    torch.manual_seed(0)
    state = InceptionV3Network().state_dict()
    path = tmp_path_factory.mktemp("inception") / "weights.pth"
    torch.save(state, path)
    return state, path


def test_architecture_matches_the_fid_checkpoint_layout(random_state):
    state, _ = random_state
    params = sum(v.numel() for k, v in state.items() if not k.startswith(("fc.",))
                 and "running" not in k and "num_batches" not in k)  # fmt: skip
    # torchvision Inception-v3 has 27,161,264 parameters; minus its aux head (3,326,696)
    # and 1000-class fc (2,049,000) that leaves this 21,785,568-parameter trunk.
    assert params == 21_785_568
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)
    assert shapes["fc.weight"] == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in shapes)


def test_forward_with_random_weights_gives_2048_features(random_state):
    _, path = random_state
    with pytest.warns(UserWarning, match="sha256"):
        net = InceptionV3FID(weights=path)
    gray = torch.rand(2, 1, 28, 28) * 2 - 1
    rgb = gray.repeat(1, 3, 1, 1)
    feats = net(gray)
    assert feats.shape == (2, 2048) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # post-ReLU average pool
    assert torch.allclose(net(rgb), feats, atol=1e-5)


def test_weights_from_environment_variable(random_state, monkeypatch):
    _, path = random_state
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    net = InceptionV3FID(check_hash=False)
    state, _ = random_state
    key = "Mixed_7c.branch_pool.conv.weight"
    assert torch.equal(net.net.Mixed_7c.branch_pool.conv.weight, state[key])


def test_missing_weights_error_names_file_and_env_var(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("DGAN_CACHE", str(tmp_path))
    with pytest.raises(InceptionWeightsMissing) as err:
        InceptionV3FID()
    assert WEIGHTS_ENV in str(err.value) and WEIGHTS_FILE in str(err.value)
    assert str(tmp_path / WEIGHTS_FILE) in str(err.value)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(InceptionWeightsMissing, match=WEIGHTS_ENV):
        InceptionV3FID()


def test_weights_found_in_the_cache_dir(random_state, tmp_path, monkeypatch):
    _, path = random_state
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("DGAN_CACHE", str(tmp_path))
    (tmp_path / WEIGHTS_FILE).symlink_to(path)
    assert InceptionV3FID(check_hash=False).net.fc.weight.shape == (1008, 2048)


def test_mismatched_state_dict_is_rejected(random_state, tmp_path):
    state, _ = random_state
    broken = {k: v for k, v in state.items() if not k.startswith("Mixed_7c")}
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(ValueError, match="do not match"):
        InceptionV3FID(weights=path, check_hash=False)
