"""Suite-wide settings."""
import pytest


@pytest.fixture(autouse=True)
def _no_run_plots(monkeypatch):
    """Searches skip their run directory's plots (about 1 s each, ~50 searches); the tests of the plots
    themselves turn them back on (``HWCOST_PLOTS=1``)."""
    monkeypatch.setenv("HWCOST_PLOTS", "0")
