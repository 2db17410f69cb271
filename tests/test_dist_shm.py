"""A 2-rank run leaves no DeepSpeed shared-memory all-reduce buffer in /dev/shm (they are RAM, and DeepSpeed
never unlinks them: neurorit.parallel.workarounds.unlink_shm_buffer)."""
import os

import pytest

from tests.support.ranks import run_ranks


@pytest.mark.slow  # a kill / resume / clean-exit check of real ranks: make test-faults (in .ci/run)
@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this OS")
def test_a_two_rank_run_leaves_no_shm_buffer():
    out = run_ranks("tests/dist_scripts/all_reduce.py").stdout
    assert "sum 3 left 0" in out.splitlines(), out[-2000:]
