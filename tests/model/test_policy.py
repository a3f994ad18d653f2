"""The triage policy: default table, site rules from TOML, never lowers, monotone in every probability."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radtriage.app.core.domain import FindingScore, Priority
from radtriage.model.policy import (
    PolicyError,
    PriorityRule,
    ThresholdPolicy,
    default_policy,
    load_policy,
)

R, U, A, S = Priority.ROUTINE, Priority.URGENT, Priority.ASAP, Priority.STAT


def finding(label: str, probability: float, threshold: float = 0.5) -> FindingScore:
    return FindingScore(label=label, probability=probability, threshold=threshold)


# ------------------------------------------------------------------------------------ the default table


@pytest.mark.parametrize(
    ("findings", "requested", "expected"),
    [
        ([finding("Pneumothorax", 0.9)], R, S),
        ([finding("Pneumothorax", 0.2, threshold=0.1)], R, S),  # positive at the model's own operating point
        ([finding("Pneumothorax", 0.4)], R, R),
        ([finding("Effusion", 0.7)], R, U),
        ([finding("Edema", 0.7)], R, U),
        ([finding("Consolidation", 0.7)], R, U),
        ([finding("Pneumonia", 0.7)], R, U),
        ([finding("Cardiomegaly", 0.99), finding("Nodule", 0.99)], R, R),  # reported, but no reordering
        ([finding("Effusion", 0.7), finding("Pneumothorax", 0.6)], U, S),
        ([finding("Effusion", 0.7)], A, A),  # never lowers
        ([], S, S),
    ],
)
def test_default_table(findings: list[FindingScore], requested: Priority, expected: Priority) -> None:
    assert default_policy().decide(findings, requested)[0] is expected


def test_the_reason_names_the_findings_that_raised_the_priority() -> None:
    priority, reason = default_policy().decide(
        [finding("Effusion", 0.72), finding("Pneumothorax", 0.61, 0.3), finding("Cardiomegaly", 0.95)], R
    )
    assert priority is S
    assert reason == "raised from routine to stat by Pneumothorax 0.61 >= 0.30"


def test_the_reason_when_nothing_or_the_order_already_decided() -> None:
    assert default_policy().decide([finding("Effusion", 0.1)], U) == (
        U,
        "kept requested urgent: no finding met a triage rule",
    )
    assert default_policy().decide([finding("Effusion", 0.8), finding("Edema", 0.9)], S) == (
        S,
        "kept requested stat; findings suggest urgent: Effusion 0.80 >= 0.50, Edema 0.90 >= 0.50",
    )


def test_min_probability_replaces_the_model_threshold() -> None:
    policy = ThresholdPolicy([PriorityRule(A, frozenset({"Mass"}), min_probability=0.9)])
    assert policy.decide([finding("Mass", 0.95, threshold=0.99)], R)[0] is A  # above 0.9, below the model's
    assert policy.decide([finding("Mass", 0.85, threshold=0.1)], R)[0] is R  # positive, but below 0.9


def test_any_finding_rule_and_unknown_labels() -> None:
    policy = ThresholdPolicy([PriorityRule(U, None), PriorityRule(S, frozenset({"Pneumothorax", "Pneumothrax"}))])
    assert policy.decide([finding("Hernia", 0.6)], R)[0] is U
    assert policy.unknown_labels(["Pneumothorax", "Hernia"]) == {"Pneumothrax"}


# ------------------------------------------------------------------------------------ properties

LABELS = ["Pneumothorax", "Effusion", "Edema", "Mass", "Nodule", "Cardiomegaly"]
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
priorities = st.sampled_from(list(Priority))
findings_strategy = st.lists(
    st.builds(finding, st.sampled_from(LABELS), unit, unit), max_size=len(LABELS), unique_by=lambda f: f.label
)
rules_strategy = st.lists(
    st.builds(
        PriorityRule,
        priorities,
        st.one_of(st.none(), st.frozensets(st.sampled_from(LABELS), min_size=1)),
        st.one_of(st.none(), unit),
    ),
    max_size=6,
)
policies = st.one_of(st.just(default_policy()), rules_strategy.map(ThresholdPolicy))


@settings(max_examples=300, deadline=None)
@given(policy=policies, findings=findings_strategy, requested=priorities)
def test_never_returns_less_than_requested(
    policy: ThresholdPolicy, findings: list[FindingScore], requested: Priority
) -> None:
    decided, reason = policy.decide(findings, requested)
    assert decided >= requested
    assert reason


@settings(max_examples=300, deadline=None)
@given(policy=policies, findings=findings_strategy, requested=priorities, data=st.data())
def test_raising_a_probability_never_lowers_the_priority(
    policy: ThresholdPolicy, findings: list[FindingScore], requested: Priority, data: st.DataObject
) -> None:
    if not findings:
        return
    index = data.draw(st.integers(0, len(findings) - 1))
    old = findings[index]
    higher = data.draw(st.floats(min_value=old.probability, max_value=1.0, allow_nan=False))
    raised = [*findings[:index], finding(old.label, higher, old.threshold), *findings[index + 1 :]]
    assert policy.decide(raised, requested)[0] >= policy.decide(findings, requested)[0]


@settings(max_examples=200, deadline=None)
@given(policy=policies, findings=findings_strategy, requested=priorities)
def test_rule_order_does_not_matter(policy: ThresholdPolicy, findings: list[FindingScore], requested: Priority) -> None:
    reversed_policy = ThresholdPolicy(reversed(policy.rules))
    assert reversed_policy.decide(findings, requested)[0] is policy.decide(findings, requested)[0]


# ------------------------------------------------------------------------------------ TOML


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_a_site_policy_loads_from_toml(tmp_path: Path) -> None:
    policy = load_policy(
        write(
            tmp_path,
            """
            name = "st-elsewhere"
            [[rules]]
            findings = ["Pneumothorax"]
            priority = "stat"
            [[rules]]
            findings = ["Mass", "Nodule"]
            min_probability = 0.9
            priority = "asap"
            [[rules]]
            findings = "*"
            priority = "urgent"
            """,
        )
    )
    assert policy.name == "st-elsewhere"
    assert policy.decide([finding("Nodule", 0.95)], R)[0] is A
    assert policy.decide([finding("Nodule", 0.6)], R)[0] is U  # positive: the catch-all rule
    assert policy.decide([finding("Pneumothorax", 0.6)], A)[0] is S


def test_no_path_means_the_default_policy() -> None:
    assert load_policy(None).rules == default_policy().rules
    assert load_policy("").rules == default_policy().rules


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[rules]]\nfindings = ["Edema"]\npriority = "high"', "rules[0]: unknown priority code 'high' (expected"),
        ('[[rules]]\nfindings = ["Edema"]\npriority = 3', "priority must be a string"),
        ('[[rules]]\nfindings = ["Edema"]', "rules[0]: missing 'priority'"),
        ('[[rules]]\npriority = "stat"', "missing 'findings'"),
        ('[[rules]]\nfindings = []\npriority = "stat"', "non-empty list"),
        ('[[rules]]\nfindings = ["*", "Edema"]\npriority = "stat"', '"*" on its own'),
        ('[[rules]]\nfindings = "Edema"\npriority = "stat"', "non-empty list"),
        ('[[rules]]\nfindings = ["Edema"]\npriority = "stat"\nmin_probability = 1.5', "min_probability must be in"),
        ('[[rules]]\nfindings = ["Edema"]\npriority = "stat"\nmin_probability = "high"', "must be a number"),
        ('[[rules]]\nfindings = ["Edema"]\npriority = "stat"\nthreshold = 0.5', "unknown keys threshold"),
        ('rule = 1', "unknown keys rule"),
        ('name = "x"', "needs a list of rules"),
        ("[[rules]\n", "not valid TOML"),
    ],
)
def test_invalid_policy_files_are_refused_with_a_clear_message(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_missing_policy_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "nope.toml")


def test_the_policy_module_does_not_import_torch() -> None:
    code = "import sys, radtriage.model.policy\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).parents[2])
