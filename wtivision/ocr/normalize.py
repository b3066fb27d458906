"""Normalising machine readings of stamped text, and the candidates for ambiguous characters.

A reading is never silently changed: ``text`` is the normalised form of what was read (upper case,
separators removed), ``raw_text`` keeps the recogniser's output, and characters that are easily
confused on stamped metal (O/0, I/1, S/5, B/8, Z/2, G/6) yield alternative ``candidates`` when their
confidence is low.
"""

from __future__ import annotations

import itertools
import re
import unicodedata

SEPARATORS = re.compile(r"[\s\-_.,:;/\\|'\"`·•]+")
CONFUSABLE: dict[str, str] = {"O": "0", "0": "O", "D": "0", "I": "1", "1": "I", "L": "1", "S": "5", "5": "S",
                              "B": "8", "8": "B", "Z": "2", "2": "Z", "G": "6", "6": "G", "Q": "0", "U": "V",
                              "V": "U"}
REVIEW_THRESHOLD = 0.80  # mean confidence under which a person must check the reading
CHAR_DOUBT = 0.90  # a confusable character under this confidence gets alternatives


def normalise(raw: str, char_confidences: list[float] | None = None) -> tuple[str, list[float]]:
    """Upper-case ASCII letters and digits only; returns the text and the matching confidences."""
    confs = list(char_confidences) if char_confidences is not None else [1.0] * len(raw)
    out, out_c = [], []
    for ch, c in zip(raw, confs):
        ch = unicodedata.normalize("NFKC", ch).upper()
        if len(ch) != 1 or SEPARATORS.fullmatch(ch) or not ch.isascii() or not ch.isalnum():
            continue
        out.append(ch)
        out_c.append(c)
    return "".join(out), out_c


def candidates(text: str, confs: list[float], max_candidates: int = 6, doubt: float = CHAR_DOUBT) -> list[str]:
    """Alternative readings: swap low-confidence confusable characters (lowest confidence first)."""
    doubtful = sorted((c, i) for i, (ch, c) in enumerate(zip(text, confs)) if ch in CONFUSABLE and c < doubt)
    positions = [i for _, i in doubtful[:3]]
    out: list[str] = []
    for k in range(1, len(positions) + 1):
        for combo in itertools.combinations(positions, k):
            chars = list(text)
            for i in combo:
                chars[i] = CONFUSABLE[chars[i]]
            alt = "".join(chars)
            if alt != text and alt not in out:
                out.append(alt)
            if len(out) >= max_candidates:
                return out
    return out


def needs_review(confidence: float, confs: list[float], threshold: float = REVIEW_THRESHOLD) -> bool:
    return not confs or confidence < threshold or min(confs) < threshold / 2
