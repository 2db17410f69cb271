"""A mining rank (``attribution/mine.py``) that sees ``NEURORIT_TEST_FREE_GIB_R<rank>`` GiB of free memory: the
ranks of one job on a shared node see different free memory, and a requeued job other memory again."""
import os

from attribution import mine
from neurorit import memory

free = float(os.environ[f"NEURORIT_TEST_FREE_GIB_R{os.environ['RANK']}"])
memory.rank_memory_bytes = lambda device: int(free * 2**30)
mine.cli()
