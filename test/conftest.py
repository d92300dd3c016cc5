"""Shared test setup. DDS discovery is pinned to loopback for the whole session as a safety net; tests that
start rclpy still set their own ROS_DOMAIN_ID (and this variable) explicitly."""

import os
from pathlib import Path

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may try a model download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; tests using it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


# Under CI every dependency is installed by .ci/run, so a skip means a broken install (messages not built,
# rclpy missing, ...) that would otherwise pass unnoticed. Only what cannot exist on a CPU machine may skip.
_SKIPS_ALLOWED_IN_CI = ("ultralytics", "torchvision", "tensorrt", "cuda", "gpu", "shared data not found")


def _strict_skips() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _fail_unexpected_skip(report) -> None:
    if not (report.skipped and _strict_skips()) or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
    if not any(word in reason.lower() for word in _SKIPS_ALLOWED_IN_CI):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every dependency must be installed: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_unexpected_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_unexpected_skip(outcome.get_result())
