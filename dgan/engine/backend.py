"""The import path the trainer uses; the backends live in `dgan.engine.backends`."""

from dgan.engine.backends import Backend, build_backend, parameter_digest

__all__ = ["Backend", "build_backend", "parameter_digest"]
