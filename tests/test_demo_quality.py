"""The default demo produces digits: judged by a classifier trained only on real MNIST.

This trains the full default demo (a few minutes on a 2-core CPU), so it is marked slow.
"""

import numpy as np
import pytest

from dgan.config import load_config
from dgan.sample import generate, load_generator
from dgan.images import to_uint8

from judge import judge, train_judge
from test_train import fit


@pytest.fixture(scope="module")
def judge_net():
    net, acc = train_judge()
    assert acc >= 0.95, f"the judge itself is too weak: held-out accuracy {acc:.3f}"
    return net


@pytest.mark.slow
def test_default_demo_makes_confident_digits_of_every_class(tmp_path, judge_net):
    cfg = load_config(None, [f"run.dir={tmp_path / 'demo'}", "log.progress=false"])
    fit(cfg)
    g = load_generator(tmp_path / "demo")
    assert g.step == cfg.train.steps
    images = to_uint8(generate(g, range(1000)))[..., 0]
    cls, conf = judge(judge_net, images)
    confident = float((conf >= 0.9).mean())
    shares = np.bincount(cls, minlength=10) / len(cls)
    print(f"confident share {confident:.3f}; class shares {np.round(shares, 3).tolist()}")
    assert confident >= 0.8
    assert shares.min() >= 0.05 and shares.max() <= 0.15


def test_judge_scores_real_digits_high(judge_net):
    from dgan.data.builtin import load_mnist

    images, labels = load_mnist()
    cls, conf = judge(judge_net, images)
    assert (cls == labels).mean() > 0.97 and (conf >= 0.9).mean() > 0.9
