"""Policy rules evaluated before memory access, device commands, handoffs and messages.

A rule is ``{conditions: [{field, operator, value}], logic: AND|OR, effect: allow|deny|require_approval|
modify, priority, scope, modify?}``. Every rule whose scope covers the operation and whose conditions hold
is a candidate; the highest priority wins and, at equal priority, the most restrictive effect (deny >
require_approval > modify > allow). With no matching rule the default is allow: capabilities, trust gates
and pool permissions still apply, policy only narrows (or, with ``modify``, reshapes) what they allow.
Evaluation is pure: a context dict in, a ``Decision`` out.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from daemon.hub.errors import PolicyError

OPERATORS = ("equals", "not_equals", "in", "not_in", "greater_than", "less_than", "contains", "starts_with",
             "ends_with", "exists", "not_exists")
EFFECTS = ("allow", "deny", "require_approval", "modify")
_RESTRICTIVENESS = {"deny": 3, "require_approval": 2, "modify": 1, "allow": 0}
SCOPES = ("*", "memory", "device", "handoff", "message", "pool")

RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["conditions", "effect"],
    "properties": {
        "id": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
        "description": {"type": "string", "maxLength": 500},
        "conditions": {"type": "array", "maxItems": 32, "items": {
            "type": "object", "required": ["field", "operator"],
            "properties": {"field": {"type": "string", "minLength": 1, "maxLength": 128},
                           "operator": {"enum": list(OPERATORS)}, "value": {}},
            "additionalProperties": False}},
        "logic": {"enum": ["AND", "OR"]},
        "effect": {"enum": list(EFFECTS)},
        "priority": {"type": "integer", "minimum": -1000000, "maximum": 1000000},
        "scope": {"enum": list(SCOPES)},
        "modify": {"type": "object"},
        "enabled": {"type": "boolean"},
    },
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True)
class Condition:
    field: str
    operator: str
    value: Any = None


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    conditions: tuple[Condition, ...]
    logic: str = "AND"
    effect: str = "allow"
    priority: int = 0
    scope: str = "*"
    modify: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    enabled: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "description": self.description, "logic": self.logic, "effect": self.effect,
            "priority": self.priority, "scope": self.scope, "modify": dict(self.modify), "enabled": self.enabled,
            "conditions": [{"field": c.field, "operator": c.operator, "value": c.value} for c in self.conditions],
        }

    @staticmethod
    def from_json(data: Mapping[str, Any], *, rule_id: str | None = None) -> Rule:
        try:
            conditions = tuple(
                Condition(str(c["field"]), str(c["operator"]), c.get("value")) for c in data.get("conditions", [])
            )
            rule = Rule(
                id=rule_id or str(data.get("id") or f"pol-{uuid.uuid4().hex[:12]}"),
                conditions=conditions,
                logic=str(data.get("logic", "AND")),
                effect=str(data["effect"]),
                priority=int(data.get("priority", 0)),
                scope=str(data.get("scope", "*")),
                modify=dict(data.get("modify") or {}),
                description=str(data.get("description", "")),
                enabled=bool(data.get("enabled", True)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PolicyError(f"malformed rule: {exc}") from None
        rule.validate()
        return rule

    def validate(self) -> None:
        if self.logic not in ("AND", "OR"):
            raise PolicyError("logic must be AND or OR")
        if self.effect not in EFFECTS:
            raise PolicyError(f"effect must be one of {', '.join(EFFECTS)}")
        if self.scope not in SCOPES:
            raise PolicyError(f"scope must be one of {', '.join(SCOPES)}")
        for c in self.conditions:
            if c.operator not in OPERATORS:
                raise PolicyError(f"operator must be one of {', '.join(OPERATORS)}")
            if c.operator in ("in", "not_in") and not isinstance(c.value, list):
                raise PolicyError(f"{c.field}: operator {c.operator} needs a list value")
            if c.operator in ("greater_than", "less_than") and (
                    isinstance(c.value, bool) or not isinstance(c.value, int | float)):
                raise PolicyError(f"{c.field}: operator {c.operator} needs a number")
        if self.effect == "modify" and not self.modify:
            raise PolicyError("a modify rule needs a non-empty 'modify' object")


@dataclass(frozen=True, slots=True)
class Decision:
    effect: str
    rule_id: str | None
    modifications: Mapping[str, Any] = field(default_factory=dict)
    matched: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.effect in ("allow", "modify")

    def to_json(self) -> dict[str, Any]:
        return {"effect": self.effect, "allowed": self.allowed, "rule_id": self.rule_id,
                "modifications": dict(self.modifications), "matched": list(self.matched)}


_MISSING = object()


def lookup(context: Mapping[str, Any], path: str) -> Any:
    """Dotted-path lookup (``agent.type``); ``_MISSING`` when any step is absent."""
    node: Any = context
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return _MISSING
    return node


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def holds(cond: Condition, context: Mapping[str, Any]) -> bool:
    """Whether one condition holds; a type mismatch is simply false, never an error."""
    actual = lookup(context, cond.field)
    op, expected = cond.operator, cond.value
    if op == "exists":
        return actual is not _MISSING and actual is not None
    if op == "not_exists":
        return actual is _MISSING or actual is None
    if actual is _MISSING:
        return op in ("not_equals", "not_in")
    if op == "equals":
        return bool(actual == expected)
    if op == "not_equals":
        return bool(actual != expected)
    if op == "in":
        return isinstance(expected, list) and _hashable_in(actual, expected)
    if op == "not_in":
        return isinstance(expected, list) and not _hashable_in(actual, expected)
    if op in ("greater_than", "less_than"):
        a, b = _number(actual), _number(expected)
        if a is None or b is None:
            return False
        return a > b if op == "greater_than" else a < b
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(expected, str) and expected in actual
        if isinstance(actual, list | tuple | frozenset | set):
            return _hashable_in(expected, list(actual))
        if isinstance(actual, Mapping):
            return isinstance(expected, str) and expected in actual
        return False
    if op == "starts_with":
        return isinstance(actual, str) and isinstance(expected, str) and actual.startswith(expected)
    if op == "ends_with":
        return isinstance(actual, str) and isinstance(expected, str) and actual.endswith(expected)
    return False


def _hashable_in(value: Any, items: Sequence[Any]) -> bool:
    if isinstance(value, list | tuple | frozenset | set):
        return any(v in items for v in value)
    return value in items


def matches(rule: Rule, context: Mapping[str, Any]) -> bool:
    if not rule.enabled:
        return False
    if rule.scope != "*" and rule.scope != context.get("scope"):
        return False
    if not rule.conditions:
        return True
    results = (holds(c, context) for c in rule.conditions)
    return all(results) if rule.logic == "AND" else any(results)


def evaluate(rules: Sequence[Rule], context: Mapping[str, Any]) -> Decision:
    """The decision for one operation; ``context["scope"]`` names the kind (memory, device, ...)."""
    hits = [r for r in rules if matches(r, context)]
    if not hits:
        return Decision("allow", None)
    winner = max(hits, key=lambda r: (r.priority, _RESTRICTIVENESS[r.effect]))
    mods: dict[str, Any] = {}
    if winner.effect == "modify":
        for rule in sorted((r for r in hits if r.effect == "modify"), key=lambda r: r.priority):
            mods.update(rule.modify)
    return Decision(winner.effect, winner.id, mods, tuple(r.id for r in hits))


def canonical(rule: Rule) -> str:
    return json.dumps(rule.to_json(), sort_keys=True)
