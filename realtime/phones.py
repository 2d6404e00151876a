"""One phone inventory for the whole project, and mappings onto it from every engine we use.

The inventory is CMU ARPAbet (lowercase, no stress digits, 39 phones) plus ``sil``. Every corpus source
(flite, festival, MBROLA SAMPA, pocketsphinx, the festvox-ru labels) is mapped onto it with
:func:`normalize_phone`. Mappings choose the nearest *articulation* (what the lips and jaw do), because the
phones drive mouth targets: e.g. a Russian palatalised consonant maps to its plain consonant, a German
front rounded vowel maps to a rounded vowel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

SILENCE = "sil"

VOWELS: tuple[str, ...] = (
    "aa", "ae", "ah", "ao", "aw", "ay", "eh", "er", "ey", "ih", "iy", "ow", "oy", "uh", "uw",
)  # fmt: skip
CONSONANTS: tuple[str, ...] = (
    "b", "ch", "d", "dh", "f", "g", "hh", "jh", "k", "l", "m", "n", "ng", "p", "r", "s", "sh", "t",
    "th", "v", "w", "y", "z", "zh",
)  # fmt: skip

PHONES: tuple[str, ...] = (SILENCE, *VOWELS, *CONSONANTS)
"""The inventory: ``sil`` first (index 0), then vowels, then consonants."""

PHONE_INDEX: Mapping[str, int] = {p: i for i, p in enumerate(PHONES)}

# Phone classes, by articulation. A phone may be in several classes (``w`` is a glide and rounded).
CLASSES: Mapping[str, frozenset[str]] = {
    "silence": frozenset({SILENCE}),
    "vowel": frozenset(VOWELS),
    "consonant": frozenset(CONSONANTS),
    "bilabial": frozenset({"p", "b", "m"}),
    "labiodental": frozenset({"f", "v"}),
    "dental": frozenset({"th", "dh"}),
    "alveolar": frozenset({"t", "d", "s", "z", "n", "l"}),
    "postalveolar": frozenset({"sh", "zh", "ch", "jh"}),
    "velar": frozenset({"k", "g", "ng"}),
    "glottal": frozenset({"hh"}),
    "rhotic": frozenset({"r", "er"}),
    "glide": frozenset({"w", "y"}),
    "rounded": frozenset({"uw", "uh", "ow", "ao", "w", "oy"}),
    "open": frozenset({"aa", "ae", "ah", "aw", "ay", "ao"}),
    "front": frozenset({"iy", "ih", "ey", "eh", "ae"}),
    "stop": frozenset({"p", "b", "t", "d", "k", "g"}),
    "nasal": frozenset({"m", "n", "ng"}),
    "fricative": frozenset({"f", "v", "th", "dh", "s", "z", "sh", "zh", "hh"}),
    "affricate": frozenset({"ch", "jh"}),
    "diphthong": frozenset({"aw", "ay", "ey", "ow", "oy"}),
}


class UnknownPhoneError(ValueError):
    """A label that the named source's table does not know."""

    def __init__(self, label: str, source: str) -> None:
        super().__init__(f"unknown phone label {label!r} from source {source!r}")
        self.label = label
        self.source = source


# flite / festival (CMU "radio" phone set) and pocketsphinx: ARPAbet plus silences and TIMIT-style
# extras. Stress digits are stripped before lookup.
_ARPABET_EXTRA: dict[str, str] = {
    "pau": SILENCE, "h#": SILENCE, "#": SILENCE, "ssil": SILENCE, "sil": SILENCE, "sp": SILENCE,
    "brth": SILENCE, "bn": SILENCE, "epi": SILENCE, "pcl": SILENCE,
    "ax": "ah", "axh": "ah", "axr": "er", "ix": "ih", "ux": "uw",
    "dx": "d", "nx": "n", "el": "l", "em": "m", "en": "n", "eng": "ng", "hv": "hh", "q": "hh",
}  # fmt: skip
ARPABET: Mapping[str, str] = {**{p: p for p in PHONES}, **_ARPABET_EXTRA}

# MBROLA SAMPA as emitted by espeak-ng's mb-us1/us2/us3 (US), mb-en1 (British) and the accented
# English voices mb-de2-en, mb-fr4-en, mb-nl2-en. Case matters in SAMPA, so no lowercasing here.
SAMPA: Mapping[str, str] = {
    "_": SILENCE, "#": SILENCE,
    # vowels
    "{": "ae", "A": "aa", "A:": "aa", "Q": "aa", "a": "aa", "a:": "aa",
    "@": "ah", "V": "ah", "6": "ah", "@U": "ow", "oU": "ow", "o": "ow", "o:": "ow",
    "3": "er", "3:": "er", "r=": "er", "@r": "er", "9": "er", "2": "er", "2:": "er",
    "E": "eh", "e": "eh", "E:": "eh", "e@": "eh", "EI": "ey", "eI": "ey", "e:": "ey", "Ei": "ey",
    "I": "ih", "I@": "ih", "i": "iy", "i:": "iy",
    "O": "ao", "O:": "ao", "O2": "ao", "OI": "oy", "OY": "oy", "Oy": "oy",
    "U": "uh", "U@": "uh", "u": "uw", "u:": "uw", "y": "uw", "y:": "uw", "Y": "uh",
    "AI": "ay", "aI": "ay", "ai": "ay", "aU": "aw", "Au": "aw", "au": "aw",
    # consonants
    "p": "p", "p_h": "p", "b": "b", "t": "t", "t_h": "t", "d": "d", "k": "k", "k_h": "k", "g": "g",
    "4": "d", "?": "hh", "f": "f", "v": "v", "T": "th", "D": "dh", "s": "s", "z": "z",
    "S": "sh", "Z": "zh", "h": "hh", "x": "hh", "X": "hh", "C": "hh", "tS": "ch", "dZ": "jh",
    "tj": "ch", "dj": "jh", "m": "m", "m=": "m", "n": "n", "n=": "n", "N": "ng", "J": "n",
    "l": "l", "l=": "l", "l/": "l", "L": "l", "5": "l", "r": "r", "R": "r", "w": "w", "j": "y", "H": "w",
}  # fmt: skip

# festvox-ru (msu_ru_nsh) labels: doubled consonants are the palatalised ones -> plain consonant;
# doubled vowels are stressed, ``ae``/``ay``/``ur`` are second-level reduced vowels.
RUSSIAN: Mapping[str, str] = {
    "pau": SILENCE, "#": SILENCE, "sil": SILENCE,
    "ii": "iy", "i": "ih", "yy": "ih", "y": "ih", "uu": "uw", "u": "uw", "ur": "uh",
    "ee": "eh", "e": "eh", "oo": "ao", "aa": "aa", "a": "ah", "ae": "ah", "ay": "ih",
    "p": "p", "pp": "p", "b": "b", "bb": "b", "t": "t", "tt": "t", "d": "d", "dd": "d",
    "k": "k", "kk": "k", "g": "g", "gg": "g", "c": "s", "ch": "ch", "f": "f", "ff": "f",
    "v": "v", "vv": "v", "s": "s", "ss": "s", "z": "z", "zz": "z", "sh": "sh", "sch": "sh",
    "zh": "zh", "h": "hh", "hh": "hh", "m": "m", "mm": "m", "n": "n", "nn": "n", "l": "l",
    "ll": "l", "r": "r", "rr": "r", "j": "y",
}  # fmt: skip

_TABLES: Mapping[str, str] = {
    "flite": "arpabet", "festival": "arpabet", "pocketsphinx": "arpabet", "pico": "arpabet",
    "allison": "arpabet", "arpabet": "arpabet", "mbrola": "sampa", "sampa": "sampa",
    "festvox_ru": "russian", "russian": "russian",
}  # fmt: skip
SOURCES: tuple[str, ...] = tuple(_TABLES)

_STRESS = re.compile(r"[0-9]+$")
_NOISE = re.compile(r"^\+\+?[a-z_]+\+?\+$")  # pocketsphinx fillers: +NSN+, ++GARBAGE++, ...


def normalize_phone(label: str, source: str) -> str:
    """Map one engine's phone label onto the inventory; raise :class:`UnknownPhoneError` if unknown."""
    table = _TABLES.get(source)
    if table is None:
        raise ValueError(f"unknown phone source {source!r}; expected one of {', '.join(SOURCES)}")
    if table == "sampa":
        phone = SAMPA.get(label.strip())
    elif table == "russian":
        phone = RUSSIAN.get(label.strip().lower())
    else:
        key = _STRESS.sub("", label.strip().lower())
        phone = SILENCE if _NOISE.match(key) else ARPABET.get(key)
    if phone is None:
        raise UnknownPhoneError(label, source)
    return phone


def classes_of(phone: str) -> frozenset[str]:
    """All class names an inventory phone belongs to (raises ``KeyError`` for non-inventory phones)."""
    if phone not in PHONE_INDEX:
        raise KeyError(f"{phone!r} is not in the phone inventory")
    return frozenset(name for name, members in CLASSES.items() if phone in members)


def in_class(phone: str, name: str) -> bool:
    """Whether an inventory phone belongs to class ``name`` (e.g. ``"bilabial"``)."""
    return phone in CLASSES[name]


def unknown_labels(labels: Iterable[str], source: str) -> list[str]:
    """The labels from ``labels`` that ``source``'s table cannot map, sorted and deduplicated."""
    bad: set[str] = set()
    for label in labels:
        try:
            normalize_phone(label, source)
        except UnknownPhoneError:
            bad.add(label)
    return sorted(bad)
