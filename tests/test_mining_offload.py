"""Mining under any DeepSpeed config (``mining.ds_config``): ZeRO-3 with the parameters offloaded to CPU memory
(the code path of ds_configs/zero3_offload.json, for 70B on 2 GPUs) mines the same statistics and neuron map as
plain ZeRO-3, on 2 real ranks."""
import json

import pytest

from tests.support.workspaces import mining_workspace


@pytest.mark.distributed
def test_offloaded_mining_equals_plain_zero3(tmp_path, run_ranks):
    config = mining_workspace(str(tmp_path / "ws"))
    for name, extra in (("plain", []), ("offload", ["--mining.ds_config", "ds_configs/cpu_zero3_offload.json"])):
        run_ranks("attribution/mine.py", "--config", config, "--mining.output_dir", str(tmp_path / name),
                  "--mining.zero_stage", "3", *extra)
    stats = [(tmp_path / n / "neuron_stats.safetensors").read_bytes() for n in ("plain", "offload")]
    assert stats[0] == stats[1]
    maps = [json.loads((tmp_path / n / "neuron_map.json").read_text()) for n in ("plain", "offload")]
    assert maps[0]["groups"] == maps[1]["groups"] and maps[0]["hash"] == maps[1]["hash"]
    assert maps[1]["provenance"]["mining"]["ds_config"] == "ds_configs/cpu_zero3_offload.json"
