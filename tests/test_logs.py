"""The log's flood guard (whatsup/observe/logs.py), with a fake clock: repeated lines become one summary."""
import io
import logging

from whatsup.observe.logs import Summarizer
from whatsup.testing import FakeClock


def logger_with(summarizer):
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(summarizer)
    log = logging.getLogger(f"test.logs.{id(summarizer)}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log, out


def test_repeated_lines_past_the_burst_are_held_back_and_summarised_once_the_period_ends():
    clock = FakeClock()
    summarizer = Summarizer(burst=3, period=10.0, clock=clock)
    log, out = logger_with(summarizer)
    for i in range(1000):
        log.info("refused frame from %s", f"127.0.0.{i % 40}")
        clock.now += 0.005
    log.info("another kind of line")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # three of the flood, one of the other kind
    clock.now += 10.0
    summarizer.flush()
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("997 more like this in the last 10 s: refused frame from 127.0.0.")
    summarizer.flush()  # said once
    assert len(out.getvalue().splitlines()) == 5


def test_a_kind_that_comes_back_after_its_period_is_logged_again_after_its_summary():
    clock = FakeClock()
    summarizer = Summarizer(burst=2, period=10.0, clock=clock)
    log, out = logger_with(summarizer)
    for _ in range(5):
        log.warning("flood %d", 1)
    clock.now += 11.0
    log.warning("flood %d", 2)
    assert out.getvalue().splitlines() == ["flood 1", "flood 1", "3 more like this in the last 10 s: flood 1",
                                           "flood 2"]
