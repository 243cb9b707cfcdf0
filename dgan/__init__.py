"""dgan: train generative adversarial networks from a laptop CPU to a preempted multi-node cluster."""

__version__ = "0.1.0"
