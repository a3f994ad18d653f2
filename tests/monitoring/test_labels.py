"""The NegEx-style label extractor on report sentences as radiologists write them."""

from __future__ import annotations

import pytest

from radtriage.monitoring.labels import ABNORMAL, Mention, classify_mentions, extract_labels, looks_english


@pytest.mark.parametrize(
    ("text", "label", "expected"),
    [
        ("No pneumothorax.", "Pneumothorax", Mention.NEGATED),
        ("There is no evidence of pleural effusion.", "Effusion", Mention.NEGATED),
        ("Lungs without focal consolidation.", "Consolidation", Mention.NEGATED),
        ("The left effusion has resolved.", "Effusion", Mention.NEGATED),
        ("Pneumothorax is not seen.", "Pneumothorax", Mention.NEGATED),
        ("Possible right effusion.", "Effusion", Mention.UNCERTAIN),
        ("Cannot exclude early pneumonia.", "Pneumonia", Mention.UNCERTAIN),
        ("Can not exclude early pneumonia.", "Pneumonia", Mention.UNCERTAIN),  # "not" inside an uncertainty phrase
        ("Bibasilar atelectasis versus pneumonia.", "Pneumonia", Mention.UNCERTAIN),
        ("Right lower lobe pneumonia.", "Pneumonia", Mention.STATED),
        ("Mild pulmonary oedema.", "Edema", Mention.STATED),
        ("Heart size is normal.", "Cardiomegaly", Mention.UNMENTIONED),
        # A termination term ends the negation's scope.
        ("No effusion but there is atelectasis.", "Atelectasis", Mention.STATED),
        ("No effusion but there is atelectasis.", "Effusion", Mention.NEGATED),
        # The nearest trigger governs: the effusion is uncertain, the pneumothorax negated.
        ("No pneumothorax, possible small effusion.", "Effusion", Mention.UNCERTAIN),
        ("No pneumothorax, possible small effusion.", "Pneumothorax", Mention.NEGATED),
        # A list after one negation is negated throughout.
        ("No effusion, pneumothorax, or consolidation.", "Consolidation", Mention.NEGATED),
        # Beyond the scope (six words) the negation no longer reaches.
        ("No change in the appearance of the chest since yesterday with persistent effusion.", "Effusion",
         Mention.STATED),
    ],
)
def test_mentions(text: str, label: str, expected: Mention) -> None:
    assert classify_mentions(text, label) is expected


def test_a_stated_mention_anywhere_wins_over_a_negated_one() -> None:
    labels = extract_labels("No left effusion. Small right effusion.")
    assert labels["Effusion"].value == 1.0 and labels["Effusion"].mention is Mention.STATED


def test_abnormal_follows_the_findings() -> None:
    assert extract_labels("No acute cardiopulmonary abnormality. Lungs are clear.")[ABNORMAL].value == 0.0
    uncertain = extract_labels("Possible small effusion.")[ABNORMAL]
    assert uncertain.value == 1.0 and not uncertain.certain
    # A finding the model does not score still makes the study abnormal.
    assert extract_labels("Small right apical pneumothorax.")[ABNORMAL].value == 1.0


def test_coded_findings_win_over_the_text() -> None:
    labels = extract_labels("No effusion.", coded={"Effusion": 1.0, "Pneumonia": None})
    assert labels["Effusion"].value == 1.0 and labels["Effusion"].mention is Mention.CODED
    assert labels["Pneumonia"].mention is Mention.UNCERTAIN
    assert labels[ABNORMAL].value == 1.0


def test_english_is_recognised_and_other_languages_are_not() -> None:
    assert looks_english("Heart size normal. No pleural effusion.")
    assert not looks_english("Kein Pleuraerguss. Herz normal gross. Lunge frei belüftet.")
    assert not looks_english("")
