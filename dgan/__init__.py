"""dgan: train generative adversarial networks from a laptop CPU to a preempted multi-node cluster."""

__version__ = "0.1.0"


_API = ("TrainedGenerator", "generate", "interpolate", "load_generator")
_TRANSLATE_API = ("TrainedTranslator", "load_translator", "translate_files")
_ENHANCE_API = ("TrainedEnhancer", "enhance_files", "load_enhancer", "tiled_apply")


def __getattr__(name: str):  # lazy: `import dgan` (and the CLI's start) stays free of torch
    if name in _API:
        from dgan import sample

        return getattr(sample, name)
    if name in _TRANSLATE_API:
        from dgan import translate

        return getattr(translate, name)
    if name in _ENHANCE_API:
        from dgan import enhance

        return getattr(enhance, name)
    raise AttributeError(f"module 'dgan' has no attribute {name!r}")
