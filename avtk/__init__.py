"""avtk: audio-visual speaker recognition toolkit.

Python API (avtk/api.py, imported on first use so that `import avtk` and `avtk --help` stay cheap):
load_model, SpeakerModel, FaceModel, Verifier, Verification.
"""

__version__ = "0.1.0"

_API = ("load_model", "SpeakerModel", "FaceModel", "Verifier", "Verification")
__all__ = ["__version__", *_API]


def __getattr__(name):
    """The API's names, from avtk.api on first access (PEP 562)."""
    if name in _API:
        from avtk import api

        return getattr(api, name)
    raise AttributeError(f"module 'avtk' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
