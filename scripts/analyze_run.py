#!/usr/bin/env python3
"""Why a run's numbers are what they are: ``rag/analysis.py`` (read its docstring) as a script.

    python scripts/analyze_run.py --run outputs/smollm2 [--eval-dir DIR ...] [--compare-map MAP]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rag.analysis import main  # noqa: E402

if __name__ == "__main__":
    main()
