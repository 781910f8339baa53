"""Time on air against published figures, and the duty-cycle budget with an injected clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.lora_airtime import AirtimeError, DutyCycleBudget, LoRaSettings, payload_symbols, time_on_air_s

# Published figures, 125 kHz, CR 4/5, 8-symbol preamble, explicit header, CRC on, LDRO automatic
# (SF11/SF12). Source: The Things Network's LoRaWAN airtime calculator (avbentem airtime-calculator,
# the table TTN's Fair Use Policy documentation links to) and Semtech's LoRa Calculator tool; the
# 13-byte column is an empty LoRaWAN uplink (13 bytes of MAC overhead), 23 bytes a 10-byte application
# payload, 51 bytes the EU868 DR0..DR2 maximum. The calculators show these rounded to 0.1 ms; the exact
# values were checked by hand against the SX1276 datasheet formula (section 4.1.1.7).
PUBLISHED_MS = [
    # (sf, payload bytes, milliseconds)
    (7, 13, 46.336),
    (8, 13, 82.432),
    (9, 13, 164.864),
    (10, 13, 288.768),
    (11, 13, 577.536),
    (12, 13, 1155.072),
    (7, 23, 61.696),  # 10-byte application payload + 13 bytes LoRaWAN overhead
    (8, 23, 113.152),
    (9, 23, 205.824),
    (10, 23, 370.688),
    (11, 23, 823.296),
    (12, 23, 1482.752),
    (7, 51, 102.656),
    (8, 51, 184.832),
    (9, 51, 328.704),
    (10, 51, 616.448),
    (11, 51, 1314.816),
    (12, 51, 2465.792),
]


@pytest.mark.parametrize(("sf", "size", "ms"), PUBLISHED_MS)
def test_time_on_air_matches_published_figures(sf: int, size: int, ms: float) -> None:
    assert time_on_air_s(LoRaSettings(sf=sf), size) * 1000 == pytest.approx(ms, abs=0.001)


def test_ldro_is_automatic_for_sf11_and_sf12_at_125khz() -> None:
    assert [LoRaSettings(sf=sf).low_data_rate_optimize for sf in range(7, 13)] == [False] * 4 + [True] * 2
    assert not LoRaSettings(sf=12, bw_hz=500000).low_data_rate_optimize
    # forcing LDRO off at SF12 shortens the packet: 4*(SF-2*DE) grows
    assert payload_symbols(LoRaSettings(sf=12, ldro=False), 51) < payload_symbols(LoRaSettings(sf=12), 51)


@given(st.integers(7, 12), st.integers(0, 254))
def test_airtime_grows_with_payload_and_sf(sf: int, size: int) -> None:
    s = LoRaSettings(sf=sf)
    assert time_on_air_s(s, size + 1) >= time_on_air_s(s, size)
    if sf < 12:
        assert time_on_air_s(LoRaSettings(sf=sf + 1), size) > time_on_air_s(s, size)


def test_settings_are_validated() -> None:
    with pytest.raises(AirtimeError):
        LoRaSettings(sf=13)
    with pytest.raises(AirtimeError):
        LoRaSettings(coding_rate=0)
    with pytest.raises(AirtimeError):
        time_on_air_s(LoRaSettings(), 256)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_budget_refuses_with_the_time_until_it_fits() -> None:
    clock = FakeClock()
    budget = DutyCycleBudget(duty_cycle=0.01, window_s=100.0, clock=clock)  # 1 s of airtime per 100 s
    assert budget.try_consume(0.4).allowed
    clock.now += 10
    assert budget.try_consume(0.4).allowed
    clock.now += 10
    refused = budget.try_consume(0.4)
    assert not refused.allowed
    # the first send (at t=1000) leaves the window at t=1100, 80 s from now
    assert refused.retry_after_s == pytest.approx(80.0)
    assert refused.used_s == pytest.approx(0.8)
    clock.now += 80
    assert budget.try_consume(0.4).allowed


def test_a_refused_send_fits_exactly_when_promised() -> None:
    clock = FakeClock()
    budget = DutyCycleBudget(duty_cycle=0.01, window_s=100.0, clock=clock)
    for gap in (0.0, 5.0, 5.0):
        clock.now += gap
        assert budget.try_consume(0.3).allowed
    refused = budget.try_consume(0.5)  # needs the first two sends (t=1000, 1005) gone
    assert refused.retry_after_s == pytest.approx(95.0)
    clock.now += 94.9
    assert not budget.check(0.5).allowed
    clock.now += 0.1
    assert budget.try_consume(0.5).allowed


def test_budget_never_grants_a_send_longer_than_itself() -> None:
    budget = DutyCycleBudget(duty_cycle=0.01, window_s=100.0, clock=FakeClock())
    decision = budget.check(1.5)
    assert not decision.allowed
    assert decision.retry_after_s is None


@given(st.lists(st.tuples(st.floats(0.0, 50.0), st.floats(0.01, 1.0)), max_size=60))
def test_budget_is_never_exceeded_in_any_window(events: list[tuple[float, float]]) -> None:
    clock = FakeClock()
    budget = DutyCycleBudget(duty_cycle=0.02, window_s=100.0, clock=clock)
    granted: list[tuple[float, float]] = []
    for gap, air in events:
        clock.now += gap
        d = budget.try_consume(air)
        if d.allowed:
            granted.append((clock.now, air))
        else:
            assert d.retry_after_s is not None
            assert 0.0 <= d.retry_after_s <= 100.0
    for t, _ in granted:
        in_window = sum(a for s, a in granted if t - 100.0 < s <= t)
        assert in_window <= 2.0 + 1e-9
