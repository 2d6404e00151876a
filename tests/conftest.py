"""Shared fixtures: a test config with temporary dirs, one engine per test run, real speech."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from realtime.config import Config, load_config

SPEECH_TEXT = "Please bring me a bumpy pillow, Bob. My mom baked a big apple pie."


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in -1..1 and the sample rate of a 16-bit PCM WAV."""
    with wave.open(str(path), "rb") as wf:
        rate, channels = wf.getframerate(), wf.getnchannels()
        pcm = np.frombuffer(wf.readframes(wf.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    return pcm.reshape(-1, channels).mean(axis=1), rate


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 4 s of English speech from flite's awb voice (never used in training)."""
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (run scripts/setup.sh --test)")
    out = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["flite", "-voice", "awb", "-t", SPEECH_TEXT, "-o", str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def speech_16k(speech_wav: Path) -> np.ndarray:
    pcm, rate = read_wav(speech_wav)
    assert rate == 16000
    return pcm


@pytest.fixture
def test_config(tmp_path: Path) -> Config:
    """The shipped config with caches and outputs in a temporary directory."""
    return load_config(
        overrides=[
            f"avatars.cache_dir={tmp_path / 'avatars'}",
            f"offline.output_dir={tmp_path / 'outputs'}",
            "server.port=0",
            "server.workers=0",  # in-process sessions; tests/test_workers.py covers workers
        ],
        env={},
    )


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory):
    """One warmed engine for the whole run: loading models once keeps the suite fast."""
    from realtime.engine import Engine

    cache = tmp_path_factory.mktemp("avatar-cache")
    eng = Engine(load_config(overrides=[f"avatars.cache_dir={cache}"], env={}))
    eng.warmup()
    yield eng
    eng.close()
