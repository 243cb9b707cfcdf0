"""The Python inference API as a notebook uses it: train, load, generate, in one process."""

import torch

import dgan
from dgan.images import to_uint8

from test_train import fit, small_config


def test_train_load_and_generate_in_one_process(tmp_path):
    run = tmp_path / "run"
    fit(small_config(run, "train.steps=4", "checkpoint.every=4"))

    G = dgan.load_generator(run)
    assert isinstance(G, dgan.TrainedGenerator) and not G.training and not G.net.training
    assert (G.z_dim, G.c_dim, G.step) == (64, 10, 4)
    assert G.class_names == [str(i) for i in range(10)]
    assert (G.resolution, G.channels) == (28, 1) and G.config.model.name == "dcgan"
    assert not any(p.requires_grad for p in G.parameters())

    rng = torch.get_rng_state()
    images = G.generate(seeds=[3, 1, 4, 1 + 4])
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is left alone
    assert images.shape == (4, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert to_uint8(images).shape == (4, 28, 28, 1)

    # deterministic, and each image a function of its own seed alone
    assert torch.equal(dgan.generate(G, [3, 1, 4, 5]), images)
    assert torch.equal(G.generate(seeds=[4]), images[2:3])
    assert torch.equal(G.generate(seeds=range(10))[5], images[3])
    assert not torch.equal(images[0], images[1])

    # a class by name or by index; a bare module takes indices
    seven = G.generate(seeds=[3, 1], class_idx="7")
    assert torch.equal(seven, G.generate(seeds=[3, 1], class_idx=7))
    assert torch.equal(seven, dgan.generate(G.net, [3, 1], class_idx=7))
    assert not torch.equal(seven, G.generate(seeds=[3, 1], class_idx=8))

    # G itself is a generator module: G(z, c)
    z = torch.randn(2, G.z_dim)
    c = torch.nn.functional.one_hot(torch.tensor([7, 7]), G.c_dim).float()
    assert torch.equal(G(z, c), G.net(z, c))

    strip = dgan.interpolate(G, [3, 1], frames=5)
    assert strip.shape == (6, 1, 28, 28)
