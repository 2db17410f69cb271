"""The distributed tests' launch helpers on a machine with fewer GPUs than ranks (issue 20, item 10).

``cpu=True`` starts the ranks as a one-GPU machine does (through ``tests/support/cpu_rank.py``); each rank reports
what it sees. Under both launchers: the script ran as ``__main__`` with its own arguments, no GPU was visible, the
DeepSpeed accelerator was the CPU one, and the two ranks formed one gloo group on CPU.
"""
import json
import re

import pytest

from tests.support.ranks import launch_command, needs_cpu_ranks, run_ranks

REPORT = '''
import json, os, sys
import torch
import torch.distributed as tdist
from neurorit import parallel

if __name__ == "__main__":
    info = parallel.init_distributed()
    from deepspeed.accelerator import get_accelerator
    print("REPORT " + json.dumps({"argv": sys.argv[1:], "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                  "accelerator": get_accelerator().device_name(), "cuda": torch.cuda.is_available(),
                                  "device": str(info.device), "backend": tdist.get_backend(),
                                  "rank": info.rank, "world": info.world_size}), flush=True)
'''


def reports(stdout: str) -> list[dict]:
    """Every rank's report; two ranks writing at once may put both on one line of the launcher's output."""
    return sorted((json.loads(found) for found in re.findall(r"REPORT (\{[^{}]*\})", stdout)),
                  key=lambda r: r["rank"])


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_ranks_run_on_cpu_where_gpus_are_too_few(launcher, tmp_path):
    script = tmp_path / "report.py"
    script.write_text(REPORT)
    proc = run_ranks(str(script), "--marker", "x y", launcher=launcher, cpu=True, timeout=240)
    got = reports(proc.stdout)
    assert [r["rank"] for r in got] == [0, 1], proc.stdout[-2000:] + proc.stderr[-2000:]
    for r in got:
        assert r["argv"][-2:] == ["--marker", "x y"]
        assert r["visible"] == "" and r["cuda"] is False and r["accelerator"] == "cpu"
        assert r["device"] == "cpu" and r["backend"] == "gloo" and r["world"] == 2


def test_the_command_is_unchanged_unless_gpus_are_too_few():
    plain = launch_command("x.py", ["--a"], 2, "torchrun", cpu=False)
    forced = launch_command("x.py", ["--a"], 2, "torchrun", cpu=True)
    assert plain[-2:] == ["x.py", "--a"] and "cpu_rank.py" not in " ".join(plain)
    assert forced[-3:] == [forced[-3], "x.py", "--a"] and forced[-3].endswith("tests/support/cpu_rank.py")
    auto = launch_command("x.py", ["--a"], 2, "torchrun")
    assert ("cpu_rank.py" in " ".join(auto)) == needs_cpu_ranks(2)
