"""avtk: audio-visual speaker recognition toolkit.

Python API (imported on first use so that `import avtk` and `avtk --help` stay cheap): load_model,
SpeakerModel, FaceModel, Verifier, Verification from avtk/api.py; Gallery (speaker identification) from
avtk/identify.py.
"""

__version__ = "0.1.0"

_API = {"load_model": "api", "SpeakerModel": "api", "FaceModel": "api", "Verifier": "api", "Verification": "api",
        "Gallery": "identify"}
__all__ = ["__version__", *_API]


def __getattr__(name):
    """The API's names, from their modules on first access (PEP 562)."""
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f"avtk.{_API[name]}"), name)
    raise AttributeError(f"module 'avtk' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
