import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def seed():
    torch.manual_seed(0)


def pytest_terminal_summary(terminalreporter):
    """Print how many random networks the fuzz test generated (tests/zoo/test_fuzz.py)."""
    import sys

    fuzz = sys.modules.get("tests.zoo.test_fuzz")
    for line in getattr(fuzz, "FUZZ_SUMMARY", []):
        terminalreporter.write_line(line)


@pytest.fixture
def one_thread():
    """Run a training-loop test on one thread, then restore the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
