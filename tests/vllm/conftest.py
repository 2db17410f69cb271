"""``tests/vllm`` runs in the vLLM environment only (``bash scripts/setup_vllm_env.sh``, then
``.venv-vllm/bin/python -m pytest -q tests/vllm``).

Where vllm does not import, a run over the whole suite (``pytest tests``, ``make test``) does not collect this
folder at all: nothing here is skipped or counted as passed. Named on the command line (``pytest tests/vllm``),
it is always collected, so a missing vllm fails the run with an import error instead of passing."""
import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _named_here(config) -> bool:
    for arg in config.args:
        path = os.path.abspath(str(arg).split("::")[0])
        if path == HERE or path.startswith(HERE + os.sep):
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    if importlib.util.find_spec("vllm") is not None or _named_here(config):
        return None
    return True
