"""The restart-intensity window (OTP: more than max_restarts within period_s escalates)."""

from __future__ import annotations

from dtq_worker.intensity import RestartIntensity


def test_three_restarts_in_five_seconds_are_allowed_the_fourth_escalates() -> None:
    window = RestartIntensity(max_restarts=3, period_s=5.0)
    assert [window.record(t) for t in (0.0, 1.0, 2.0)] == [False, False, False]
    assert window.record(4.9) is True


def test_spaced_crashes_never_escalate() -> None:
    window = RestartIntensity(max_restarts=3, period_s=5.0)
    assert not any(window.record(t * 2.0) for t in range(50))
    assert len(window) == 3  # only the crashes of the last 5 s count


def test_the_window_slides() -> None:
    window = RestartIntensity(max_restarts=3, period_s=5.0)
    for t in (0.0, 1.0, 2.0):
        window.record(t)
    # The crash at 0.0 has left the window by 5.0: still three within the last 5 s.
    assert window.record(5.0) is False
    assert window.record(5.5) is True


def test_zero_restarts_allowed_escalates_at_the_first_crash() -> None:
    assert RestartIntensity(max_restarts=0, period_s=1.0).record(0.0) is True
