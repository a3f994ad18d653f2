"""The triage policy: from scored findings and the order's requested priority to a worklist priority.

Pure: no torch, no I/O except `load_policy` reading its TOML file, so any process can load and test it.

Rules
-----
A policy is a list of rules. A rule names findings (torchxrayvision labels, or ``"*"`` for any finding) and a
priority, and matches a finding that is *positive at the model's operating point* (probability >= the model's
threshold for that label), or, when the rule sets ``min_probability``, whose probability is >= that value
instead. The decision is:

* the highest priority among the rules that match at least one finding (rule order does not matter);
* then ``max(that, requested)``: a policy never lowers the priority the order already had.

Both steps only ever compare "probability >= a fixed value", so raising any probability can only add matches:
the decision is monotone. The reason string names the findings that raised the priority, with their
probabilities and the cut-off they passed; it never contains patient data.

Default policy
--------------
| Finding(s)                                 | Matches when                            | Priority  |
|--------------------------------------------|-----------------------------------------|-----------|
| Pneumothorax                               | positive at the model's operating point | stat      |
| Edema, Effusion, Consolidation, Pneumonia  | positive at the model's operating point | urgent    |
| any other finding (Cardiomegaly, Nodule,   | (no rule)                               | unchanged |
| Mass, Fracture, Atelectasis, Lung Opacity) |                                         |           |

In every case the result is at least the order's requested priority.

Why: a pneumothorax can need treatment within minutes, so it goes to the top of the list; oedema, effusion and
consolidation/pneumonia are acute findings that should be read ahead of routine work. The other findings are
reported (each result lists every score) but do not reorder the worklist by themselves: most are chronic or need
follow-up rather than an immediate read, and letting every abnormal-looking study jump the queue would make
"urgent" meaningless. A site that prefers "any positive finding is urgent" adds ``findings = "*"``. ``asap`` is
not used by default; sites may use it, e.g. for a finding above a high ``min_probability``.

TOML format (``policy`` setting)::

    # Every key of a rule except min_probability is required.
    [[rules]]
    findings = ["Pneumothorax"]
    priority = "stat"                    # routine | urgent | asap | stat  (FHIR request-priority codes)

    [[rules]]
    findings = ["Edema", "Effusion", "Consolidation", "Pneumonia"]
    priority = "urgent"

    [[rules]]
    findings = ["Mass", "Nodule"]
    min_probability = 0.9                # instead of the model's threshold
    priority = "urgent"

An optional top-level ``name`` labels the policy in logs.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radtriage.app.core.domain import FindingScore, Priority

#: In a rule's ``findings``, matches every label.
ANY_FINDING = "*"

_RULE_KEYS = frozenset({"findings", "priority", "min_probability"})
_TOP_KEYS = frozenset({"name", "rules"})


class PolicyError(ValueError):
    """A policy file or rule that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class PriorityRule:
    """Raise to `priority` when one of `findings` (None: any finding) passes the cut-off.

    The cut-off is the model's operating point for the label, or `min_probability` when it is set.
    """

    priority: Priority
    findings: frozenset[str] | None = None
    min_probability: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.priority, Priority):
            raise PolicyError(f"priority must be a Priority, got {self.priority!r}")
        if self.findings is not None:
            if isinstance(self.findings, str):
                raise PolicyError("findings must be a set of labels (or None for any finding), not a string")
            labels = frozenset(self.findings)
            if not labels or not all(isinstance(label, str) and label.strip() for label in labels):
                raise PolicyError("findings must be non-empty label names")
            object.__setattr__(self, "findings", labels)
        if self.min_probability is not None:
            value = self.min_probability
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise PolicyError(f"min_probability must be a number, got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise PolicyError(f"min_probability must be in [0, 1], got {value!r}")
            object.__setattr__(self, "min_probability", float(value))

    def cut_off(self, finding: FindingScore) -> float:
        return finding.threshold if self.min_probability is None else self.min_probability

    def matches(self, finding: FindingScore) -> bool:
        if self.findings is not None and finding.label not in self.findings:
            return False
        return finding.probability >= self.cut_off(finding)


class ThresholdPolicy:
    """The `TriagePolicy` port: site-configurable rules; the highest matching rule wins; never lowers."""

    def __init__(self, rules: Iterable[PriorityRule], name: str = "custom") -> None:
        self.rules: tuple[PriorityRule, ...] = tuple(rules)
        self.name = name
        for rule in self.rules:
            if not isinstance(rule, PriorityRule):
                raise PolicyError(f"expected PriorityRule, got {type(rule).__name__}")

    def decide(self, findings: Sequence[FindingScore], requested: Priority) -> tuple[Priority, str]:
        """The priority for a scored study and a short reason (labels and numbers only, no patient data)."""
        suggested = Priority.ROUTINE
        raisers: list[str] = []  # findings behind `suggested`, strongest rule first
        for rule in sorted(self.rules, key=lambda r: r.priority, reverse=True):
            if rule.priority < suggested:
                break  # rules are sorted: nothing below can change the outcome
            matched = [f for f in findings if rule.matches(f)]
            if not matched:
                continue
            suggested = rule.priority
            for finding in matched:
                text = f"{finding.label} {finding.probability:.2f} >= {rule.cut_off(finding):.2f}"
                if text not in raisers:
                    raisers.append(text)

        decided = max(suggested, requested)
        if not raisers:
            return decided, f"kept requested {requested.code}: no finding met a triage rule"
        if decided > requested:
            return decided, f"raised from {requested.code} to {decided.code} by {', '.join(raisers)}"
        return decided, (
            f"kept requested {requested.code}; findings suggest {suggested.code}: {', '.join(raisers)}"
        )

    def labels_named(self) -> frozenset[str]:
        """Every label the rules name; compare with the model's labels to catch a rule that can never fire."""
        return frozenset(label for rule in self.rules for label in (rule.findings or ()))

    def unknown_labels(self, model_labels: Iterable[str]) -> frozenset[str]:
        """Labels the rules name that the model does not produce (typos, or a model with fewer outputs)."""
        return self.labels_named() - frozenset(model_labels)

    def __repr__(self) -> str:
        return f"ThresholdPolicy(name={self.name!r}, rules={len(self.rules)})"


#: The default table (see the module docstring); the README copies it.
DEFAULT_RULES: tuple[PriorityRule, ...] = (
    PriorityRule(Priority.STAT, frozenset({"Pneumothorax"})),
    PriorityRule(Priority.URGENT, frozenset({"Edema", "Effusion", "Consolidation", "Pneumonia"})),
)


def default_policy() -> ThresholdPolicy:
    return ThresholdPolicy(DEFAULT_RULES, name="default")


def _parse_priority(value: Any, where: str) -> Priority:
    if not isinstance(value, str):
        raise PolicyError(f"{where}: priority must be a string, one of {_priority_codes()}")
    try:
        return Priority.from_code(value)
    except ValueError:
        raise PolicyError(f"{where}: unknown priority code {value!r} (expected one of {_priority_codes()})") from None


def _priority_codes() -> str:
    return ", ".join(p.code for p in Priority)


def _parse_rule(raw: Any, where: str) -> PriorityRule:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: a rule must be a table")
    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise PolicyError(f"{where}: unknown keys {', '.join(unknown)} (allowed: {', '.join(sorted(_RULE_KEYS))})")
    for key in ("findings", "priority"):
        if key not in raw:
            raise PolicyError(f"{where}: missing {key!r}")
    priority = _parse_priority(raw["priority"], where)

    findings_raw = raw["findings"]
    findings: frozenset[str] | None
    if findings_raw == ANY_FINDING:
        findings = None
    elif isinstance(findings_raw, list) and findings_raw and all(isinstance(f, str) for f in findings_raw):
        if ANY_FINDING in findings_raw:
            raise PolicyError(f'{where}: write findings = "*" on its own, not inside a list')
        findings = frozenset(f.strip() for f in findings_raw)
    else:
        raise PolicyError(f'{where}: findings must be a non-empty list of label names, or "*"')

    try:
        return PriorityRule(priority, findings, raw.get("min_probability"))
    except PolicyError as exc:
        raise PolicyError(f"{where}: {exc}") from None


def policy_from_mapping(data: Mapping[str, Any], source: str = "policy") -> ThresholdPolicy:
    """Build a policy from parsed TOML (or any mapping of the same shape); `source` prefixes error messages."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise PolicyError(f"{source}: unknown keys {', '.join(unknown)} (allowed: name, rules)")
    name = data.get("name", source)
    if not isinstance(name, str):
        raise PolicyError(f"{source}: name must be a string")
    rules_raw = data.get("rules")
    if not isinstance(rules_raw, list):
        raise PolicyError(f"{source}: needs a list of rules ([[rules]] tables)")
    rules = [_parse_rule(raw, f"{source}: rules[{index}]") for index, raw in enumerate(rules_raw)]
    return ThresholdPolicy(rules, name=name)


def load_policy(path: str | os.PathLike[str] | None) -> ThresholdPolicy:
    """The policy in the TOML file at `path`, or `default_policy()` when `path` is None or empty.

    Raises `PolicyError` (a `ValueError`) naming the file and the rule for a missing file, invalid TOML, an
    unknown priority code, an unknown key, or a bad ``min_probability``.
    """
    if path is None or str(path).strip() == "":
        return default_policy()
    file = Path(path)
    try:
        with file.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise PolicyError(f"policy file {file} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy file {file} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise PolicyError(f"policy file {file} cannot be read ({exc.strerror})") from None
    return policy_from_mapping(data, source=str(file))


if TYPE_CHECKING:  # mypy checks that ThresholdPolicy fits the core's port
    from radtriage.app.core.ports import TriagePolicy

    def _fits_the_port(policy: ThresholdPolicy) -> TriagePolicy:
        return policy
