"""``vae`` with ``--time-budget`` counted in CPU seconds of this process, on one thread.

On a shared machine a wall-clock budget measures the neighbours as much as the recipe; the CPU
time of one thread does not. Used by ``bench_defaults.py --clock cpu``::

    python benchmarks/cpu_budget.py train --data fashion-mnist --time-budget 120 --json
"""

from __future__ import annotations

import os
import sys
import time
import types
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import torch

    torch.set_num_threads(1)
    from vaecli import training
    from vaecli.cli import main

    training.time = types.SimpleNamespace(perf_counter=time.process_time)  # type: ignore[assignment]
    sys.argv = ["vae", *sys.argv[1:]]
    sys.exit(main())
