"""One torch thread for small tensor work: the one definition every test directory uses.

The tests run tiny models (MLPs, 16x16 convolutions, eigh of 200x200 matrices). On a busy 2-core
machine torch's second intra-op thread spin-waits far longer than the work takes (a model that
trains in a second single-threaded can take a minute), and one thread makes the numbers
reproducible from run to run and equal to those of the single-threaded worker subprocesses.

``tests/conftest.py`` wraps :func:`one_thread` as the ``one_thread`` fixture; session fixtures and
module-level helpers use the context manager directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one torch intra-op thread; the previous count is restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
