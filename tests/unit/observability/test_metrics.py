"""The exposition a caller gets: its models' series and the server-wide ones."""

from __future__ import annotations

from modelport.observability.metrics import Metrics


def _metrics() -> Metrics:
    metrics = Metrics()
    for model in ("fraud-1", "fraud-2"):
        metrics.for_model(model, "1", "http").requests.inc()
        metrics.failures.labels(model, "1", "http", "invalid").inc()
    metrics.models_loaded.set(2)
    metrics.security_events.labels("security.rate_spike").inc()
    return metrics


def test_without_a_test_every_series_is_shown() -> None:
    text = _metrics().render().decode()
    assert 'model="fraud-1"' in text and 'model="fraud-2"' in text


def test_series_of_hidden_models_are_left_out_and_server_wide_ones_stay() -> None:
    metrics = _metrics()
    text = metrics.render(lambda name: name == "fraud-1").decode()
    assert 'model="fraud-1"' in text
    assert "fraud-2" not in text
    assert "modelport_models_loaded 2.0" in text
    assert 'kind="security.rate_spike"' in text
    # Filtering a view leaves the registry whole for the next caller.
    assert 'model="fraud-2"' in metrics.render().decode()
