"""A launched rank's clean end (``neurorit.parallel.end_process``, the last call of every entry point's ``__main__``):
exit status 0, the exit handlers run while the process group is alive, unflushed output is kept, and nothing after
it runs."""
import pytest

from tests.support.ranks import run_ranks


@pytest.mark.slow  # a kill / resume / clean-exit check of real ranks: make test-faults (in .ci/run)
def test_two_ranks_end_cleanly_through_end_process():
    out = run_ranks("tests/dist_scripts/end_process.py", launcher="torchrun").stdout  # asserts exit 0
    for rank in (0, 1):
        assert f"rank {rank} sum 3" in out, out[-2000:]
        assert f"handler rank {rank} group alive True" in out, out[-2000:]
    assert "after end_process" not in out
