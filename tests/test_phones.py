"""The phone inventory and its mappings, checked against what the engines installed here really emit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from realtime import phones
from realtime.phones import PHONES, SILENCE, UnknownPhoneError, classes_of, in_class, normalize_phone

PANGRAM = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs! "
    "Joy, measure, thought, usual, ring, church, yes, hour, poor, cure, bird, button, little, water, "
    "azure, garage, thin, this, vision, hello, unmute, people, bubble, mumble."
)


def test_inventory_is_arpabet_lowercase_plus_sil() -> None:
    assert PHONES[0] == SILENCE
    assert len(PHONES) == len(set(PHONES)) == 40
    assert all(p.isalpha() and p == p.lower() for p in PHONES)
    for p in PHONES:
        assert normalize_phone(p, "arpabet") == p
        assert classes_of(p) & {"vowel", "consonant", "silence"}


def test_classes() -> None:
    assert phones.CLASSES["bilabial"] == {"p", "b", "m"}
    assert phones.CLASSES["labiodental"] == {"f", "v"}
    assert {"uw", "uh", "ow", "ao", "w", "oy"} <= phones.CLASSES["rounded"]
    assert in_class("aa", "vowel") and not in_class("m", "vowel")
    for members in phones.CLASSES.values():
        assert members <= set(PHONES)
    with pytest.raises(KeyError):
        classes_of("xx")


@pytest.mark.parametrize(
    ("label", "source", "expected"),
    [
        ("pau", "flite", "sil"),
        ("h#", "festival", "sil"),
        ("ssil", "festival", "sil"),
        ("ax", "festival", "ah"),
        ("AH1", "pocketsphinx", "ah"),
        ("SIL", "pocketsphinx", "sil"),
        ("+NSN+", "pocketsphinx", "sil"),
        ("@U", "mbrola", "ow"),
        ("{", "mbrola", "ae"),
        ("tS", "mbrola", "ch"),
        ("p_h", "mbrola", "p"),
        ("_", "mbrola", "sil"),
        ("pp", "festvox_ru", "p"),  # palatalised -> plain consonant
        ("mm", "festvox_ru", "m"),
        ("oo", "festvox_ru", "ao"),
        ("uu", "festvox_ru", "uw"),
        ("pau", "festvox_ru", "sil"),
    ],
)
def test_normalize_examples(label: str, source: str, expected: str) -> None:
    assert normalize_phone(label, source) == expected


def test_russian_rounded_vowels_stay_rounded() -> None:
    for label in ("oo", "uu", "u", "ur"):
        assert in_class(normalize_phone(label, "festvox_ru"), "rounded")


def test_unknown_labels_raise_clear_errors() -> None:
    with pytest.raises(UnknownPhoneError, match="'qq'.*'flite'"):
        normalize_phone("qq", "flite")
    with pytest.raises(UnknownPhoneError):
        normalize_phone("aa", "mbrola")  # an ARPAbet label is not SAMPA
    with pytest.raises(ValueError, match="unknown phone source"):
        normalize_phone("aa", "klatt")
    assert phones.unknown_labels(["aa", "zz9", "pau"], "flite") == ["zz9"]


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")


@pytest.mark.parametrize("voice", ["rms", "slt", "kal16"])
def test_flite_labels_covered(voice: str, tmp_path: Path) -> None:
    _need("flite")
    out = subprocess.run(
        ["flite", "-voice", voice, "-psdur", "-t", PANGRAM, "-o", str(tmp_path / "x.wav")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    labels = {tok.rpartition(":")[0] for tok in out.split() if ":" in tok}
    assert len(labels) > 30
    assert phones.unknown_labels(labels, "flite") == []


@pytest.mark.parametrize(
    "voice", ["mb-us1", "mb-us2", "mb-us3", "mb-en1", "mb-de2-en", "mb-fr4-en", "mb-nl2-en"]
)
def test_mbrola_sampa_labels_covered(voice: str, tmp_path: Path) -> None:
    _need("espeak-ng")
    pho = tmp_path / "x.pho"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-q", "--pho", f"--phonout={pho}", PANGRAM],
        capture_output=True,
        check=True,
    )
    labels = {line.split()[0] for line in pho.read_text().splitlines() if len(line.split()) >= 2}
    assert len(labels) > 20
    assert phones.unknown_labels(labels, "mbrola") == []


def test_festival_labels_covered(tmp_path: Path) -> None:
    _need("festival")
    from realtime.corpus import engines

    for voice in engines.FESTIVAL_VOICES:
        if not engines.voice_available("festival", voice):
            continue
        speech = engines.festival(PANGRAM, voice, tmp_path)
        labels = {label for label, _, _ in speech.phones or []}
        assert len(labels) > 30
        assert phones.unknown_labels(labels, "festival") == []


def test_pocketsphinx_phones_covered() -> None:
    pocketsphinx = pytest.importorskip("pocketsphinx")
    model = Path(pocketsphinx.get_model_path()) / "en-us"
    labels = set()
    for line in (model / "cmudict-en-us.dict").read_text(encoding="utf-8").splitlines():
        labels.update(line.split()[1:])
    for line in (model / "en-us" / "noisedict").read_text(encoding="utf-8").splitlines():
        labels.update(line.split()[1:])
    assert {"AA", "SIL", "ZH"} <= labels
    assert phones.unknown_labels(labels, "pocketsphinx") == []


def test_festvox_ru_labels_covered() -> None:
    from realtime.corpus import engines

    lab_dir = engines.FESTVOX_RU / "lab"
    if not lab_dir.is_dir():
        pytest.skip("festvox-ru not installed")
    labels = {
        parts[2] for path in lab_dir.glob("*.lab") for parts in (ln.split() for ln in path.read_text().splitlines())
        if len(parts) == 3
    }  # fmt: skip
    assert len(labels) > 40
    assert phones.unknown_labels(labels, "festvox_ru") == []
