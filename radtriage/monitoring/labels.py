"""Labels per finding from a radiologist's report text: a small NegEx-style rule set.

After NegEx (Chapman WW, Bridewell W, Hanbury P, Cooper GF, Buchanan BG. "A simple algorithm for identifying
negated findings and diseases in discharge summaries." J Biomed Inform 2001;34(5):301-310): a finding mention is

* **negated** when a negation trigger comes before it in the same clause ("no pneumothorax", "without
  effusion", "negative for edema") or a post-negation trigger follows it ("effusion has resolved",
  "pneumothorax is not seen");
* **uncertain** when an uncertainty trigger governs it the same way ("possible effusion", "cannot exclude
  pneumonia", "atelectasis versus consolidation"), as the CheXpert labeller extends NegEx (Irvin et al., AAAI
  2019);
* **stated** otherwise.

A clause ends at a sentence end or a termination term ("but", "however", "although", ...), so in "no effusion
but there is atelectasis" only the effusion is negated. Across the report, a stated mention wins over an
uncertain one, and both win over a negated one ("no left effusion. Small right effusion." is an effusion).
Findings never mentioned are "unmentioned" (absent, as the NIH and CheXpert labellers read them). "abnormal" is
1 when any finding of the lexicon (not only the model's) is stated, uncertain when only uncertain ones are, and
0 otherwise.

The rules are English only; `looks_english` flags text they cannot read, and such reports get no labels.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final


class Mention(enum.StrEnum):
    STATED = "stated"
    UNCERTAIN = "uncertain"
    NEGATED = "negated"
    UNMENTIONED = "unmentioned"
    CODED = "coded"  # from a coded finding (OBX CE/CWE value, conclusionCode), not from text


#: Label (torchxrayvision name) → phrases that mention it. Longer phrases are matched first.
LEXICON: Final[Mapping[str, tuple[str, ...]]] = {
    "Atelectasis": ("atelectasis", "atelectatic", "atelectases", "collapse of the", "lobar collapse", "lung collapse"),
    "Cardiomegaly": (
        "cardiomegaly", "enlarged heart", "heart is enlarged", "cardiac enlargement", "heart size is enlarged",
    ),
    "Consolidation": ("consolidation", "consolidations", "consolidative"),
    "Edema": ("edema", "oedema", "pulmonary vascular congestion", "vascular congestion", "fluid overload"),
    "Effusion": ("effusion", "effusions", "pleural fluid"),
    "Emphysema": ("emphysema", "emphysematous"),
    "Fibrosis": ("fibrosis", "fibrotic"),
    "Fracture": ("fracture", "fractures", "fractured"),
    "Hernia": ("hernia", "hiatal hernia", "hiatus hernia"),
    "Infiltration": ("infiltrate", "infiltrates", "infiltration", "infiltrations"),
    "Lung Opacity": ("opacity", "opacities", "opacification", "airspace disease", "air space disease"),
    "Mass": ("mass", "masses"),
    "Nodule": ("nodule", "nodules", "nodular opacity"),
    "Pleural_Thickening": ("pleural thickening", "thickened pleura"),
    "Pneumonia": ("pneumonia", "pneumonias", "pneumonic"),
    "Pneumothorax": ("pneumothorax", "pneumothoraces"),
}

ABNORMAL: Final = "abnormal"

_PRE_NEGATION: Final = (
    "no evidence of", "no signs of", "no sign of", "no definite", "no radiographic evidence of", "negative for",
    "free of", "absence of", "without", "no new", "no acute", "no", "not", "nor", "rules out", "ruled out",
    "resolution of", "resolved",
)
_POST_NEGATION: Final = (
    "is not seen", "are not seen", "not seen", "is absent", "are absent", "has resolved", "have resolved",
    "resolved", "is not identified", "are not identified", "not identified", "is excluded", "ruled out",
)
_PRE_UNCERTAINTY: Final = (
    "cannot be excluded", "can not be excluded", "cannot exclude", "can not exclude", "cannot rule out",
    "not excluded", "possible", "possibly", "probable", "questionable", "question of", "suspicious for",
    "suspected", "concern for", "concerning for", "may represent", "may be", "might be", "could be",
    "suggestive of", "suggests", "differential includes", "equivocal", "versus", "vs",
)
_POST_UNCERTAINTY: Final = (
    "cannot be excluded", "can not be excluded", "not excluded", "is not excluded", "is possible",
    "is questioned", "versus", "vs", "is suspected",
)
_TERMINATION: Final = ("but", "however", "although", "though", "except", "which", "aside from", "apart from")

#: Whole-report phrases that say "normal" (they make "abnormal" 0 unless a finding is stated).
NORMAL_PHRASES: Final = (
    "no acute cardiopulmonary", "no acute abnormality", "no active disease", "normal chest", "lungs are clear",
    "no abnormality", "unremarkable", "within normal limits", "no acute findings", "no acute process",
)

_COMMON_ENGLISH: Final = frozenset(
    "the no is are of and with without there in on to a seen normal lung lungs heart chest clear size "
    "acute left right pleural effusion evidence findings impression".split()
)

_SENTENCE = re.compile(r"(?<=[.!?;:\n])\s+|\n+")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def _phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str]:
    ordered = sorted(set(phrases), key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(re.escape(p) for p in ordered) + r")\b")


_PRE_NEG = _phrase_pattern(_PRE_NEGATION)
_POST_NEG = _phrase_pattern(_POST_NEGATION)
_PRE_UNC = _phrase_pattern(_PRE_UNCERTAINTY)
_POST_UNC = _phrase_pattern(_POST_UNCERTAINTY)
_TERM = _phrase_pattern(_TERMINATION)
_FINDING = {label: _phrase_pattern(phrases) for label, phrases in LEXICON.items()}
#: NegEx's scope: a trigger governs mentions at most this many words away (Chapman 2001 used five).
SCOPE_WORDS: Final = 6


@dataclass(frozen=True)
class ExtractedLabel:
    label: str
    #: 1.0 present (stated, uncertain or coded present), 0.0 absent (negated, unmentioned or coded absent).
    value: float
    mention: Mention

    @property
    def certain(self) -> bool:
        return self.mention is not Mention.UNCERTAIN


def looks_english(text: str) -> bool:
    """True when at least a few common English radiology words make up a fair share of the words."""
    words = _WORD.findall(text.lower())
    if not words:
        return False
    common = sum(w in _COMMON_ENGLISH for w in words)
    return common >= 2 and common / len(words) >= 0.12 or any(_FINDING[lab].search(text.lower()) for lab in LEXICON)


def _clauses(text: str) -> list[str]:
    clauses: list[str] = []
    for sentence in _SENTENCE.split(text.lower()):
        clauses.extend(part for part in _TERM.split(sentence) if part.strip())
    return clauses


def _words_between(clause: str, start: int, end: int) -> int:
    return len(_WORD.findall(clause[start:end]))


def _trigger(clause: str, start: int, end: int) -> Mention | None:
    """The kind of the trigger nearest to a mention within NegEx's scope: before it first, then after it.

    The nearest trigger wins, so in "no pneumothorax, possible small effusion" the effusion is uncertain, and in
    "can not exclude pneumonia" the longer uncertainty phrase (it ends closer) beats its "not".
    """
    before = [
        (m.end(), kind)
        for pattern, kind in ((_PRE_NEG, Mention.NEGATED), (_PRE_UNC, Mention.UNCERTAIN))
        for m in pattern.finditer(clause, 0, start)
        if _words_between(clause, m.end(), start) <= SCOPE_WORDS
    ]
    if before:
        return max(before, key=lambda item: (item[0], item[1] is Mention.UNCERTAIN))[1]
    after = [
        (m.start(), kind)
        for pattern, kind in ((_POST_NEG, Mention.NEGATED), (_POST_UNC, Mention.UNCERTAIN))
        for m in pattern.finditer(clause, end)
        if _words_between(clause, end, m.start()) <= SCOPE_WORDS
    ]
    if after:
        return min(after, key=lambda item: (item[0], item[1] is not Mention.UNCERTAIN))[1]
    return None


def classify_mentions(text: str, label: str) -> Mention:
    """How the report mentions `label` (a key of `LEXICON`), all clauses considered."""
    pattern = _FINDING[label]
    found: set[Mention] = set()
    for clause in _clauses(text):
        for match in pattern.finditer(clause):
            found.add(_trigger(clause, match.start(), match.end()) or Mention.STATED)
    for mention in (Mention.STATED, Mention.UNCERTAIN, Mention.NEGATED):
        if mention in found:
            return mention
    return Mention.UNMENTIONED


def extract_labels(
    text: str, coded: Mapping[str, float | None] | None = None, labels: Iterable[str] | None = None
) -> dict[str, ExtractedLabel]:
    """Labels for every finding of the lexicon (or `labels`), plus "abnormal".

    `coded` holds coded findings (label → 1.0 present, 0.0 absent, None uncertain); a coded finding wins over the
    text for that label, because a code is what the radiologist chose on purpose.
    """
    wanted = list(labels) if labels is not None else list(LEXICON)
    coded = dict(coded or {})
    result: dict[str, ExtractedLabel] = {}
    mentions = {label: classify_mentions(text, label) for label in LEXICON}
    for label in LEXICON:
        if label in coded:
            value = coded[label]
            if value is None:
                mentions[label] = Mention.UNCERTAIN
            else:
                mentions[label] = Mention.CODED if value == 1.0 else Mention.NEGATED
    for label in wanted:
        if label not in LEXICON:
            continue
        mention = mentions[label]
        if label in coded and coded[label] is not None:
            result[label] = ExtractedLabel(label, float(coded[label] or 0.0), Mention.CODED)
            continue
        value = 1.0 if mention in (Mention.STATED, Mention.UNCERTAIN) else 0.0
        result[label] = ExtractedLabel(label, value, mention)
    positives = {m for m in mentions.values() if m in (Mention.STATED, Mention.CODED)}
    if positives:
        result[ABNORMAL] = ExtractedLabel(ABNORMAL, 1.0, Mention.STATED)
    elif Mention.UNCERTAIN in mentions.values():
        result[ABNORMAL] = ExtractedLabel(ABNORMAL, 1.0, Mention.UNCERTAIN)
    else:
        result[ABNORMAL] = ExtractedLabel(ABNORMAL, 0.0, Mention.NEGATED)
    return result


def says_normal(text: str) -> bool:
    lowered = text.lower()
    return any(phrase in lowered for phrase in NORMAL_PHRASES)


__all__ = [
    "ABNORMAL",
    "LEXICON",
    "ExtractedLabel",
    "Mention",
    "classify_mentions",
    "extract_labels",
    "looks_english",
    "says_normal",
]
