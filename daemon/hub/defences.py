"""Defences against memory extraction and poisoning: screening, masking, output limits, anomaly, rate limits.

- Input screening refuses writes carrying prompt-injection phrasing (OWASP LLM01 examples: "ignore previous
  instructions", role overrides, fake system blocks) before they become memories other agents will read.
- Output masking replaces secrets (cloud keys, tokens, private keys) in what the hub returns; output
  limits cap items and characters per answer so one query cannot dump a pool.
- Query anomaly scoring watches each agent's recent queries (rate, breadth, volume) and refuses an agent
  that looks like it is enumerating memory.
- Token buckets limit each agent and each session; a refusal says when to retry (429 + Retry-After).
All of it is pure or in-memory with an injected clock.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from daemon.hub.errors import RateLimited, Rejected

INJECTION_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        ("ignore-instructions",
         r"\b(ignore|disregard|forget|override)\b.{0,40}\b(previous|prior|above|earlier|all|any|your)\b.{0,40}"
         r"\b(instructions?|prompts?|rules|directives|guidelines)\b"),
        ("role-override", r"\byou are now\b|\bfrom now on,? you\b|\bact as (an? )?(unrestricted|jailbroken|dan)\b"),
        ("fake-system-block", r"<\s*/?\s*(system|assistant|im_start|im_end)\s*>|\[\s*/?\s*(system|inst)\s*\]"),
        ("prompt-exfiltration",
         r"\b(reveal|print|repeat|show|output|leak)\b.{0,30}\b(system prompt|hidden instructions|your instructions)\b"),
        ("jailbreak", r"\bjailbreak\b|\bdeveloper mode\b|\bDAN mode\b"),
        ("tool-hijack", r"\b(exfiltrate|send|post|upload)\b.{0,40}\b(all|every)\b.{0,20}\b(memor(y|ies)|secrets?|"
                        r"tokens?|credentials?)\b"),
    )
)

SECRET_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("private-key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$)"),
        ("aws-access-key", r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
        ("github-token", r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
        ("openai-key", r"\bsk-[A-Za-z0-9_-]{20,}\b"),
        ("slack-token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"),
        ("mycoedge-token", r"\bmyc_[A-Za-z0-9_-]{20,}\b"),
        ("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b"),
        ("password-assignment", r"(?i)\b(password|passwd|secret|api[_-]?key)\b\s*[:=]\s*\S+"),
    )
)


def screen(text: str) -> list[str]:
    """Names of the injection patterns found in ``text`` (empty when clean)."""
    return [name for name, pattern in INJECTION_PATTERNS if pattern.search(text)]


def require_clean(text: str) -> None:
    found = screen(text)
    if found:
        raise Rejected(f"content looks like a prompt injection ({', '.join(found)})", patterns=found)


def mask_secrets(text: str) -> tuple[str, int]:
    """``text`` with every secret replaced by ``[REDACTED:<kind>]``, and how many were masked."""
    count = 0
    for name, pattern in SECRET_PATTERNS:
        text, n = pattern.subn(f"[REDACTED:{name}]", text)
        count += n
    return text, count


@dataclass(frozen=True, slots=True)
class OutputLimits:
    max_items: int = 50
    max_chars_per_item: int = 4000
    max_total_chars: int = 100_000


def limit_text(text: str, max_chars: int) -> tuple[str, bool]:
    if len(text) <= max_chars:
        return text, False
    return text[:max_chars] + "…[truncated]", True


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take`` returns 0 or the seconds until a token."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate if self.rate > 0 else math.inf


class RateLimiter:
    """Per-key token buckets (``agent:<id>``, ``session:<id>``); idle buckets are forgotten."""

    def __init__(self, *, rate: float, burst: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._max_keys = max_keys
        self.refused = 0

    def check(self, key: str, cost: float = 1.0) -> None:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._forget_full(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        wait = bucket.take(now, cost)
        if wait > 0:
            self.refused += 1
            raise RateLimited(f"rate limit for {key} exceeded ({self.rate:g}/s, burst {self.burst:g})", wait)

    def _forget_full(self, now: float) -> None:
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * b.rate >= b.burst]
        for k in full:
            del self._buckets[k]


@dataclass(slots=True)
class _QueryWindow:
    events: deque[tuple[float, int, int]] = field(default_factory=deque)  # (time, breadth, results)


class AnomalyScorer:
    """A 0..1 score of how much an agent's recent queries look like memory extraction.

    Three signals over a sliding window, each scaled to 0..1 and averaged with weights: query rate against
    ``expected_per_min``, the share of broad queries (empty, one short word or a wildcard), and the
    results returned against ``expected_results``. A score at or above ``threshold`` refuses the query.
    """

    BROAD = re.compile(r"^\s*(\*|%|\.|\w{0,2})\s*$")

    def __init__(self, *, window_s: float = 60.0, expected_per_min: float = 60.0, expected_results: int = 500,
                 threshold: float = 0.8, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.expected_per_min = expected_per_min
        self.expected_results = expected_results
        self.threshold = threshold
        self._clock = clock
        self._windows: dict[str, _QueryWindow] = {}

    def _window(self, agent_id: str) -> _QueryWindow:
        now = self._clock()
        win = self._windows.setdefault(agent_id, _QueryWindow())
        while win.events and win.events[0][0] < now - self.window_s:
            win.events.popleft()
        return win

    def score(self, agent_id: str, query: str | None) -> float:
        """The score this query would bring the agent to (not recorded)."""
        win = self._window(agent_id)
        broad = 1 if query is None or self.BROAD.match(query) else 0
        events = [*win.events, (self._clock(), broad, 0)]
        per_min = len(events) * 60.0 / self.window_s
        rate = min(1.0, per_min / (self.expected_per_min * 2))
        breadth = sum(e[1] for e in events) / len(events) if len(events) >= 5 else 0.0
        volume = min(1.0, sum(e[2] for e in events) / (self.expected_results * 2))
        return round(0.45 * rate + 0.25 * breadth + 0.30 * volume, 4)

    def record(self, agent_id: str, query: str | None, results: int) -> None:
        broad = 1 if query is None or self.BROAD.match(query) else 0
        self._window(agent_id).events.append((self._clock(), broad, results))

    def check(self, agent_id: str, query: str | None) -> float:
        score = self.score(agent_id, query)
        if score >= self.threshold:
            raise RateLimited(f"query pattern looks like memory extraction (anomaly score {score})",
                              retry_after_s=self.window_s / 4)
        return score
