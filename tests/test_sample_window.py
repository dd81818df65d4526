"""The timing series' sample windows: the last N samples in order, in an array that stops
growing at N (a long run's stages reach their size early and stay there)."""

from __future__ import annotations

from segstream.pipeline.telemetry.series import SampleWindow, Series, summarize


def test_a_sample_window_keeps_the_last_samples_in_order_and_stops_growing():
    window = SampleWindow(1000)
    for k in range(300):
        window.append(float(k))
    assert window.values().tolist() == [float(k) for k in range(300)]
    for k in range(300, 2500):
        window.append(float(k))
    assert len(window) == 1000 and window.values().tolist() == [float(k) for k in range(1500, 2500)]
    assert list(window)[:2] == [1500.0, 1501.0]
    assert window._values.nbytes == 8 * 1000  # 8 bytes a sample, never more than N
    assert summarize(window) == summarize(list(range(1500, 2500)))


def test_a_frozen_series_keeps_its_summary_and_lets_its_samples_go():
    series = Series()
    for k in range(100):
        series.add(float(k))
    before = series.to_json()
    series.freeze()
    assert series.to_json() == before and len(series.samples) == 0
