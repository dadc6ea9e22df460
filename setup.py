"""avtk: audio-visual speaker recognition toolkit (Kaldi/ESPnet recipe style)."""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPyWithUtils(build_py):
    """build_py that also copies the top-level utils/ (the Kaldi-style shell helpers, executable bits kept) into
    the package as avtk/utils/, so that a normal install carries them and `avtk utils-dir` finds them (see
    avtk/shell.py). An editable install needs no copy: it uses the source tree's utils/."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            self.copy_tree("utils", os.path.join(self.build_lib, "avtk", "utils"))


setup(
    name="avtk",
    version="0.1.0",
    description="Audio-visual speaker recognition toolkit: Kaldi-style recipes, "
    "ark/scp features and embeddings, cosine and fusion scoring.",
    packages=find_packages(include=["avtk", "avtk.*"]),
    python_requires=">=3.9",
    # torch: install the CPU wheel first (`pip install torch==2.13.0`); this range admits it.
    install_requires=[
        "torch>=2.1",
        "numpy>=1.22",
        "soundfile>=0.12",
        "kaldiio>=2.18",
        "configargparse>=1.5",
        "scikit-learn>=1.0",
        "PyYAML>=5.4",
        "tqdm>=4.60",
        # Pillow reads and writes the aligned face jpgs (the seed's frame_align layout).
        "Pillow>=9.0",
    ],
    extras_require={
        "test": ["pytest>=7", "kaldi-native-fbank>=1.18", "hypothesis>=6", "matplotlib>=3.5"],
        "plot": ["matplotlib>=3.5"],
        # PyAV decodes VoxCeleb2's m4a/mp4. The MTCNN face detector's weights come from facenet-pytorch,
        # installed apart with `pip install --no-deps facenet-pytorch==2.6.0` (its metadata pins an old torch).
        "video": ["av>=11"],
        # avtk export --format onnx, and its parity test against onnxruntime
        "onnx": ["onnx>=1.17", "onnxruntime>=1.19"],
        # bench/extract.py's peer, SpeechBrain's ECAPA-TDNN: what its import needs; speechbrain itself goes in with
        # `pip install --no-deps speechbrain==1.1.2` (it requires torchaudio, whose wheels are CUDA builds).
        "bench": ["hyperpyyaml>=1.2", "sentencepiece>=0.1.99", "tqdm>=4.42", "packaging>=20"],
    },
    entry_points={"console_scripts": ["avtk=avtk.cli:main"]},
    cmdclass={"build_py": BuildPyWithUtils},
)
