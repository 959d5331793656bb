"""``vae`` with ``--time-budget`` counted in CPU seconds of this process, on one thread.

On a shared machine a wall-clock budget measures the neighbours as much as the recipe; the CPU
time of one thread does not. Used by ``bench_defaults.py --clock cpu``::

    python benchmarks/cpu_budget.py train --data fashion-mnist --time-budget 120 --json
"""

from __future__ import annotations

import sys

import harness

if __name__ == "__main__":
    harness.use_cpu_clock()
    from vaecli.cli import main

    sys.argv = ["vae", *sys.argv[1:]]
    sys.exit(main())
