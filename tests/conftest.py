import os

import pytest
import torch

# The tests never download: Hugging Face models are built from configs and reloaded from tmp_path only. Offline mode
# makes the hub refuse any request instead of trying one, whatever a test passes.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
