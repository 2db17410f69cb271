"""Console entry points of evaluation (``pyproject.toml`` ``[project.scripts]``): ``neurorit-eval``
(``rag/evaluate.py``), ``neurorit-report`` (``rag/report.py``) and ``neurorit-write-evidence``
(``rag/write_evidence.py``), with the same flags. A console script exits with what its function returns, and the
entries' ``main`` return their results (a dict), which ``sys.exit`` would print and turn into status 1; these
return 0 instead (the results are on disk); a rank of several ends through ``parallel.end_process``.
"""
from __future__ import annotations

from neurorit import parallel


def evaluate() -> int:
    from rag.evaluate import main

    main()
    parallel.end_process()
    return 0


def report() -> int:
    from rag.report import main

    main()
    return 0


def write_evidence() -> int:
    from rag.write_evidence import main

    main()
    parallel.end_process()
    return 0
