"""Speech sources: the TTS engines (with their own phone timings) and the real-speech recordings.

Every function returns 16 kHz mono int16 audio and *raw* phone segments ``[(label, start_s, end_s)]`` in
the engine's own labels (``None`` where the engine gives no timings); :mod:`realtime.phones` maps them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

SAMPLE_RATE = 16000
RawPhones = list[tuple[str, float, float]]

FESTVOX_RU = Path("/usr/share/festival/voices/russian/msu_ru_nsh_clunits")
ALLISON_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ALLISON_DIR_FALLBACK = Path("/usr/share/asterisk/sounds/en")
MBROLA_DIR = Path("/usr/share/mbrola")

FLITE_VOICES = ("rms", "slt", "kal16")  # never "awb": that speaker is in evaluation data
FESTIVAL_VOICES = {"kal": "kal_diphone", "ked": "ked_diphone", "slt": "cmu_us_slt_arctic_hts"}
# espeak-ng voice -> MBROLA database; the accented ones speak English with a German/French/Dutch voice.
MBROLA_VOICES = {
    "us1": ("mb-us1", "us1"),
    "us2": ("mb-us2", "us2"),
    "us3": ("mb-us3", "us3"),
    "en1": ("mb-en1", "en1"),
    "de2": ("mb-de2-en", "de2"),
    "fr4": ("mb-fr4-en", "fr4"),
    "nl2": ("mb-nl2-en", "nl2"),
}
PICO_VOICES = ("en-US", "en-GB")

_TIMEOUT_S = 60


class SynthesisError(RuntimeError):
    """An engine failed or produced unusable output for one utterance."""


@dataclass(frozen=True)
class Speech:
    """One synthesised or loaded utterance before phone normalisation."""

    pcm: np.ndarray  # int16, 16 kHz mono
    phones: RawPhones | None  # engine labels; None = needs forced alignment


def read_wav(path: str | Path) -> np.ndarray:
    """Read a PCM16 WAV, downmix to mono and resample to 16 kHz (int16)."""
    try:
        with wave.open(str(path), "rb") as handle:
            rate, channels, width = handle.getframerate(), handle.getnchannels(), handle.getsampwidth()
            data = handle.readframes(handle.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        raise SynthesisError(f"cannot read {path}: {exc}") from exc
    if width != 2:
        raise SynthesisError(f"{path}: expected 16-bit PCM, got {8 * width}-bit")
    pcm = np.frombuffer(data, dtype="<i2").reshape(-1, channels).astype(np.float32).mean(axis=1)
    return to_int16(resample(pcm, rate, SAMPLE_RATE))


def resample(pcm: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (float32 out)."""
    if rate == target:
        return pcm.astype(np.float32)
    g = np.gcd(rate, target)
    return resample_poly(pcm.astype(np.float64), target // g, rate // g).astype(np.float32)


def to_int16(pcm: np.ndarray) -> np.ndarray:
    """Round and clip int16-scaled float samples."""
    return np.clip(np.rint(pcm), -32768, 32767).astype(np.int16)


def write_wav(path: str | Path, pcm: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write int16 mono PCM."""
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(np.ascontiguousarray(pcm, dtype="<i2").tobytes())


def _run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, env=env, check=False)
    except FileNotFoundError as exc:
        raise SynthesisError(f"{cmd[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise SynthesisError(f"{cmd[0]} timed out") from exc
    if proc.returncode != 0:
        raise SynthesisError(f"{cmd[0]} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return proc.stdout


def available(source: str) -> bool:
    """Whether a source's engine or data is installed on this machine."""
    if source == "flite":
        return shutil.which("flite") is not None
    if source == "festival":
        return shutil.which("festival") is not None
    if source == "mbrola":
        return shutil.which("mbrola") is not None and shutil.which("espeak-ng") is not None
    if source == "pico":  # no timings of its own: needs the aligner
        return (
            shutil.which("pico2wave") is not None
            and Path("/usr/share/pico/lang").is_dir()
            and importlib.util.find_spec("pocketsphinx") is not None
        )
    if source == "allison":
        return (
            allison_dir() is not None
            and importlib.util.find_spec("G722") is not None
            and importlib.util.find_spec("pocketsphinx") is not None
        )
    if source == "festvox_ru":
        return (FESTVOX_RU / "lab").is_dir()
    raise ValueError(f"unknown source {source!r}")


def voice_available(source: str, voice: str) -> bool:
    """Whether one voice of a source is installed."""
    if not available(source):
        return False
    if source == "mbrola":
        db = MBROLA_VOICES[voice][1]
        return (MBROLA_DIR / db / db).is_file()
    if source == "festival":
        return any(Path("/usr/share/festival/voices").glob(f"*/{FESTIVAL_VOICES[voice]}"))
    return True


def flite(text: str, voice: str, workdir: Path, stretch: float = 1.0, f0_mean: float | None = None) -> Speech:
    """flite with ``-psdur``: prints ``phone:end_seconds`` for each segment."""
    out = workdir / "flite.wav"
    cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}"]
    if f0_mean is not None:
        cmd += ["--setf", f"int_f0_target_mean={f0_mean:.1f}"]
    stdout = _run([*cmd, "-psdur", "-t", text, "-o", str(out)])
    phones: RawPhones = []
    start = 0.0
    for token in stdout.split():
        label, _, end = token.rpartition(":")
        if not label:
            continue
        try:
            end_s = float(end)
        except ValueError:
            continue
        phones.append((label, start, end_s))
        start = end_s
    if not phones:
        raise SynthesisError("flite printed no phone timings")
    return Speech(read_wav(out), phones)


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def festival(text: str, voice: str, workdir: Path, stretch: float = 1.0) -> Speech:
    """festival -b on a script that synthesises and walks the utterance's Segment relation."""
    out = workdir / "festival.wav"
    script = workdir / "synth.scm"
    script.write_text(
        f"(voice_{FESTIVAL_VOICES[voice]})\n"
        f"(Parameter.set 'Duration_Stretch {stretch:.3f})\n"
        f"(set! utt1 (SynthText {_scheme_string(text)}))\n"
        f'(utt.save.wave utt1 "{out}" \'riff)\n'
        '(mapcar (lambda (s) (format t "SEG %s %f %f\\n" (item.name s) '
        '(item.feat s "segment_start") (item.feat s "segment_end"))) (utt.relation.items utt1 \'Segment))\n',
        encoding="utf-8",
    )
    stdout = _run(["festival", "-b", str(script)])
    phones = [
        (parts[1], float(parts[2]), float(parts[3]))
        for parts in (line.split() for line in stdout.splitlines())
        if len(parts) == 4 and parts[0] == "SEG"
    ]
    if not phones or not out.exists():
        raise SynthesisError("festival produced no segments")
    return Speech(read_wav(out), phones)


def mbrola(text: str, voice: str, workdir: Path, speed: int = 175, pitch: int = 50) -> Speech:
    """espeak-ng writes MBROLA .pho (phone, duration ms, pitch points); mbrola renders it exactly."""
    espeak_voice, db = MBROLA_VOICES[voice]
    pho = workdir / "x.pho"
    out = workdir / "mbrola.wav"
    _run(
        [
            "espeak-ng",
            "-v",
            espeak_voice,
            "-s",
            str(speed),
            "-p",
            str(pitch),
            "-q",
            "--pho",
            f"--phonout={pho}",
            text,
        ]
    )
    phones: RawPhones = []
    t = 0.0
    for line in pho.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) < 2 or line.startswith(";"):
            continue
        dur = float(parts[1]) / 1000.0
        phones.append((parts[0], t, t + dur))
        t += dur
    if not phones:
        raise SynthesisError("espeak-ng wrote an empty .pho file")
    # -e: keep going past a missing diphone instead of aborting the whole utterance.
    _run(["mbrola", "-e", str(MBROLA_DIR / db / db), str(pho), str(out)])
    return Speech(read_wav(out), phones)


def pico(text: str, voice: str, workdir: Path, speed: int = 100, pitch: int = 100) -> Speech:
    """pico2wave has no timing output; the caller aligns it."""
    out = workdir / "pico.wav"
    markup = f'<speed level="{speed}"><pitch level="{pitch}">{text}</pitch></speed>'
    _run(["pico2wave", "-l", voice, "-w", str(out), markup], env={**os.environ})
    return Speech(read_wav(out), None)


def allison_dir() -> Path | None:
    """Where the G.722 Allison prompts are installed (Debian puts them under en_US_f_Allison)."""
    for d in (ALLISON_DIR, ALLISON_DIR_FALLBACK):
        if d.is_dir() and any(d.glob("*.g722")):
            return d
    return None


def allison(name: str) -> Speech:
    """Decode one G.722 prompt (16 kHz) with PyPI g722; no timings (aligned by the caller)."""
    import G722

    base = allison_dir()
    if base is None:
        raise SynthesisError("asterisk-core-sounds-en-g722 is not installed")
    path = base / f"{name}.g722"
    if not path.exists():
        raise SynthesisError(f"no prompt {path}")
    decoded = G722.G722(SAMPLE_RATE, 64000).decode(path.read_bytes())
    return Speech(np.asarray(decoded, dtype=np.int16), None)


def festvox_ru_ids() -> list[str]:
    """Utterance ids of the festvox-ru recordings that have both a WAV and a label file."""
    return sorted(
        p.stem for p in (FESTVOX_RU / "lab").glob("*.lab") if (FESTVOX_RU / "wav" / f"{p.stem}.wav").exists()
    )


def festvox_ru_texts() -> dict[str, str]:
    """``id -> text`` from festvox-ru's txt.done.data."""
    out: dict[str, str] = {}
    path = FESTVOX_RU / "etc" / "txt.done.data"
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line.startswith("(") and '"' in line:
            uid = line[1:].split()[0]
            out[uid] = line[line.index('"') + 1 : line.rindex('"')].replace("+", "")
    return out


def festvox_ru(uid: str) -> Speech:
    """A real Russian recording with its hand-checked label file (``end_s 125 phone`` lines)."""
    phones: RawPhones = []
    start = 0.0
    for line in (FESTVOX_RU / "lab" / f"{uid}.lab").read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        end = float(parts[0])
        phones.append((parts[2], start, end))
        start = end
    return Speech(read_wav(FESTVOX_RU / "wav" / f"{uid}.wav"), phones)
