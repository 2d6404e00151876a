"""Text for the TTS voices to speak: generated sentences, cmudict word strings, Allison transcripts.

The generated sentences lean on bilabials (p/b/m closures) and rounded vowels, because those are the
mouth shapes lip sync is judged on; the word strings from cmudict fill in the rest of the phone inventory.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

ALLISON_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")


def cmudict_path() -> Path:
    """The cmudict shipped inside the pocketsphinx wheel."""
    import pocketsphinx

    return Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"


_SUBJECTS = (
    "the boy", "my mother", "a proud bear", "the old pool boy", "Bob", "the blue moose", "our poor mule",
    "the bishop", "a movie buff", "Molly", "the plumber", "my brother", "a smooth bamboo flute",
    "the pupil", "Paula", "the mob boss", "a bubbly baby", "the room", "the judge", "Ruth",
    "the zoo keeper", "a good cook", "the shoe maker", "Bruno", "the woman", "my cousin Boris",
)  # fmt: skip
_VERBS = (
    "bought", "pulled", "moved", "brought", "pushed", "mopped", "boomed at", "put", "pumped",
    "bumped into", "grabbed", "pointed to", "mumbled about", "took", "threw", "looked at", "chewed",
    "borrowed", "remembered", "blew on", "stopped", "swapped", "booked", "opened", "approved",
)  # fmt: skip
_OBJECTS = (
    "a maple boat", "the purple balloon", "some bubble gum", "a bowl of soup", "the muddy boots",
    "a pile of pumpkins", "the broom", "a moose", "the blue moon", "a smooth pebble", "the old map",
    "a tuba", "some ripe plums", "the wooden spoon", "a pair of shoes", "the book", "a big bamboo box",
    "the brown owl", "the rope", "a mobile phone", "the pool cue", "some warm bread", "the umbrella",
    "a jumbo jet", "the porridge", "a wombat", "the bubble bath", "a bouquet of poppies",
)  # fmt: skip
_PLACES = (
    "by the pool", "in the bathroom", "at the museum", "near the bump", "on the moon", "in the boat",
    "past the barber shop", "behind the tomb", "at the zoo", "below the bridge", "in Bombay",
    "before noon", "around the room", "beyond the moor", "up the ramp", "in the cupboard",
)  # fmt: skip
_ADVERBS = (
    "probably", "boldly", "promptly", "smoothly", "poorly", "happily", "by mistake", "too soon",
    "very slowly", "with a smile", "at midnight", "in a hurry", "on purpose", "quite proudly",
)  # fmt: skip
_QUESTIONS = (
    "Who moved my {o}?", "Why would {s} buy {o}?", "Should {s} push {o} {p}?",
    "Do you remember {o}?", "Would you pass me {o}, please?", "Was it {s} who {v} {o}?",
)  # fmt: skip
_PANGRAMS = (
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs.",
    "Sphinx of black quartz, judge my vow.",
    "How vexingly quick daft zebras jump.",
    "The five boxing wizards jump quickly.",
    "Jackdaws love my big sphinx of quartz.",
    "Bright vixens jump; dozy fowl quack.",
    "The measure of a treasure is pleasure, she thought, as usual.",
    "Joy and choice: the boy annoyed the oyster with a noisy toy.",
    "Youth, truth and the smooth blue moon; who knew?",
)


def generated_sentence(rng: np.random.Generator) -> str:
    """One random template sentence, rich in bilabials and rounded vowels."""

    def pick(items: tuple[str, ...]) -> str:
        return items[int(rng.integers(len(items)))]

    s, v, o, p, a = pick(_SUBJECTS), pick(_VERBS), pick(_OBJECTS), pick(_PLACES), pick(_ADVERBS)
    form = int(rng.integers(6))
    if form == 0:
        text = f"{s} {v} {o} {p}."
    elif form == 1:
        text = f"{s} {a} {v} {o}."
    elif form == 2:
        text = pick(_QUESTIONS).format(s=s, v=v, o=o, p=p)
    elif form == 3:
        text = f"{s} {v} {o}, and then {pick(_SUBJECTS)} {pick(_VERBS)} {pick(_OBJECTS)}."
    elif form == 4:
        text = f"{p.capitalize()}, {s} {v} {o} {a}."
    else:
        text = pick(_PANGRAMS)
    return text[0].upper() + text[1:]


_WORD_OK = re.compile(r"^[a-z]{2,10}$")


def load_cmudict_words(path: Path | None = None) -> list[str]:
    """Plain alphabetic words (no variants, no abbreviations) from cmudict, in file order."""
    words: list[str] = []
    with open(path or cmudict_path(), encoding="utf-8") as handle:
        for line in handle:
            word = line.split(" ", 1)[0]
            if _WORD_OK.match(word):
                words.append(word)
    return words


def load_vocabulary(path: Path | None = None) -> frozenset[str]:
    """Every word the aligner's dictionary knows (pronunciation variants folded)."""
    with open(path or cmudict_path(), encoding="utf-8") as handle:
        return frozenset(line.split(" ", 1)[0].split("(", 1)[0] for line in handle if line.strip())


def in_vocabulary(line: str, vocabulary: frozenset[str]) -> bool:
    """Whether the aligner can align ``line`` (all its words are in the dictionary)."""
    words = words_for_alignment(line)
    return bool(words) and all(w in vocabulary for w in words)


def word_string(rng: np.random.Generator, words: list[str], n_min: int = 4, n_max: int = 9) -> str:
    """A random string of cmudict words, spoken as a list."""
    n = int(rng.integers(n_min, n_max + 1))
    chosen = [words[int(i)] for i in rng.integers(len(words), size=n)]
    return ", ".join(chosen[:2]) + " " + " ".join(chosen[2:]) + "."


def load_allison_transcripts(path: Path = ALLISON_TRANSCRIPTS) -> dict[str, str]:
    """``name -> text`` for the Asterisk core prompts, skipping comments and non-speech like ``[beep]``."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith(";") or ":" not in line:
                continue
            name, text = line.split(":", 1)
            # Drop stage directions: "[beep]", "<beep ascending>", "(simple tone sound plays)".
            text = re.sub(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)", "", text).strip()
            if not text or name.startswith("silence/"):
                continue
            out[name.strip()] = text
    return out


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """Spell out 0..9999 the way the prompts are read."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    rest = n % 1000
    return number_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + number_words(rest))


def words_for_alignment(text: str) -> list[str]:
    """Lowercase words (digits spelled out, punctuation dropped) as the aligner's dictionary spells them."""
    text = text.lower().replace("&", " and ").replace("%", " percent ")
    text = re.sub(
        r"\d+", lambda m: " " + number_words(int(m.group())) + " " if len(m.group()) <= 4 else " ", text
    )
    text = re.sub(r"[^a-z' ]+", " ", text)
    return [w.strip("'") for w in text.split() if w.strip("'")]
