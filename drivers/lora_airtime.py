"""LoRa time on air (Semtech's formula) and a duty-cycle budget enforced before each send.

The formula is the one in Semtech's SX1276/77/78/79 datasheet (section 4.1.1.7, "Time on air") and
application note AN1200.13 ("LoRa Modem Designer's Guide"), which the SX126x datasheet (section 6.1.4)
repeats for SF7..SF12:

    T_sym      = 2^SF / BW
    T_preamble = (n_preamble + 4.25) * T_sym
    n_payload  = 8 + max(ceil((8*PL - 4*SF + 28 + 16*CRC - 20*IH) / (4*(SF - 2*DE))) * (CR + 4), 0)
    T_packet   = T_preamble + n_payload * T_sym

with ``CR`` 1..4 for coding rates 4/5..4/8, ``IH`` 1 for implicit header, ``DE`` 1 when low data rate
optimisation is on. Semtech mandates LDRO when a symbol lasts 16 ms or more (SF11 and SF12 at 125 kHz,
SF12 at 250 kHz); ``ldro=None`` applies that rule.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from drivers.errors import DriverError

VALID_SF = range(5, 13)
VALID_BW_HZ = (7800, 10400, 15600, 20800, 31250, 41700, 62500, 125000, 250000, 500000)
LDRO_SYMBOL_S = 0.016  # Semtech: LDRO is required above 16 ms symbol time


class AirtimeError(DriverError):
    """Radio settings outside what the LoRa modem supports."""


@dataclass(frozen=True, slots=True)
class LoRaSettings:
    """Modulation settings of a LoRa link (``coding_rate`` is the 4/x denominator minus 4: 1..4)."""

    sf: int = 7
    bw_hz: int = 125000
    coding_rate: int = 1
    preamble: int = 8
    explicit_header: bool = True
    crc: bool = True
    ldro: bool | None = None  # None: on when the symbol time is >= 16 ms

    def __post_init__(self) -> None:
        if self.sf not in VALID_SF:
            raise AirtimeError(f"spreading factor {self.sf} is not 5..12")
        if self.bw_hz <= 0:
            raise AirtimeError(f"bandwidth {self.bw_hz} Hz is not positive")
        if self.coding_rate not in range(1, 5):
            raise AirtimeError(f"coding rate index {self.coding_rate} is not 1..4 (4/5..4/8)")
        if not 0 < self.preamble <= 0xFFFF:
            raise AirtimeError(f"preamble {self.preamble} is not 1..65535 symbols")

    @property
    def symbol_s(self) -> float:
        return float(2**self.sf) / self.bw_hz

    @property
    def low_data_rate_optimize(self) -> bool:
        if self.ldro is not None:
            return self.ldro
        return self.symbol_s >= LDRO_SYMBOL_S


def payload_symbols(settings: LoRaSettings, payload_len: int) -> int:
    """Number of payload symbols, header and CRC included (Semtech's ``n_payload``)."""
    if payload_len < 0 or payload_len > 255:
        raise AirtimeError(f"payload length {payload_len} is not 0..255 bytes")
    de = 1 if settings.low_data_rate_optimize else 0
    ih = 0 if settings.explicit_header else 1
    crc = 1 if settings.crc else 0
    numerator = 8 * payload_len - 4 * settings.sf + 28 + 16 * crc - 20 * ih
    denominator = 4 * (settings.sf - 2 * de)
    return 8 + max(math.ceil(numerator / denominator) * (settings.coding_rate + 4), 0)


def time_on_air_s(settings: LoRaSettings, payload_len: int) -> float:
    """Seconds one packet of ``payload_len`` bytes occupies the channel."""
    preamble = (settings.preamble + 4.25) * settings.symbol_s
    return preamble + payload_symbols(settings, payload_len) * settings.symbol_s


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    """Whether a send may go now; if not, ``retry_after_s`` says when (None: never, too long for the budget)."""

    allowed: bool
    airtime_s: float
    retry_after_s: float | None
    used_s: float
    budget_s: float


class DutyCycleBudget:
    """A sliding-window duty-cycle limit (e.g. 1 % per hour in the EU868 g1 sub-band, ETSI EN 300 220).

    Every granted send's airtime stays in the window for ``window_s``; a send is refused when it would push
    the window's total over ``duty_cycle * window_s``, and the refusal says how long until enough old sends
    have left the window. ``clock`` is injectable (monotonic seconds) so tests never sleep.
    """

    def __init__(
        self, *, duty_cycle: float = 0.01, window_s: float = 3600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not 0 < duty_cycle <= 1:
            raise AirtimeError(f"duty cycle {duty_cycle} is not in (0, 1]")
        if window_s <= 0:
            raise AirtimeError(f"duty-cycle window {window_s} s is not positive")
        self.duty_cycle = duty_cycle
        self.window_s = window_s
        self._clock = clock
        self._sends: deque[tuple[float, float]] = deque()  # (start time, airtime)

    @property
    def budget_s(self) -> float:
        return self.duty_cycle * self.window_s

    def _expire(self, now: float) -> None:
        while self._sends and self._sends[0][0] + self.window_s <= now:
            self._sends.popleft()

    def used_s(self) -> float:
        """Airtime spent inside the current window."""
        self._expire(self._clock())
        return sum(a for _, a in self._sends)

    def check(self, airtime_s: float) -> BudgetDecision:
        """Would a send of ``airtime_s`` fit now? Does not record anything."""
        now = self._clock()
        self._expire(now)
        used = sum(a for _, a in self._sends)
        budget = self.budget_s
        if airtime_s > budget:
            return BudgetDecision(False, airtime_s, None, used, budget)
        if used + airtime_s <= budget:
            return BudgetDecision(True, airtime_s, None, used, budget)
        # drop the oldest sends until the new one fits; it may go when the last dropped one expires
        remaining = used
        wait = 0.0
        for start, air in self._sends:
            remaining -= air
            wait = start + self.window_s - now
            if remaining + airtime_s <= budget:
                break
        return BudgetDecision(False, airtime_s, max(wait, 0.0), used, budget)

    def try_consume(self, airtime_s: float) -> BudgetDecision:
        """Check and, if allowed, record the send as starting now."""
        decision = self.check(airtime_s)
        if decision.allowed:
            self._sends.append((self._clock(), airtime_s))
        return decision
