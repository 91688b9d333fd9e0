"""bench/export.py: its CPU time counts the worker processes (``--workers`` > 1)."""

from __future__ import annotations

import subprocess
import sys

from tests.scripts import load_script


def test_cpu_seconds_count_the_cpu_of_finished_child_processes() -> None:
    bench = load_script("bench/export.py", "bench_export")
    own0, kids0 = bench.cpu_seconds()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)  # waited for, as Beam's workers
    own1, kids1 = bench.cpu_seconds()
    assert kids1 - kids0 >= 0.45  # the child's CPU, which process_time alone leaves out
    assert own1 - own0 < 0.45
