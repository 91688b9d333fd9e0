"""A launcher that submits a tiny Beam pipeline without waiting, then exits.

Run as ``python -m tests.distributed.launch_submit OUT N SECONDS BEAM_ARGS...``: each of
``N`` elements sleeps ``SECONDS`` on a worker and then writes ``OUT/<element>`` holding
the worker's process id. The pipeline is started with
:func:`pipelines.beam_util.submit`, as ``landslides scan --submit-only`` starts a sweep,
and the process exits as soon as it returns. Kept apart from the test module so that
the workers import nothing of pytest.
"""

from __future__ import annotations

import os
import sys
import time


def slow_write(element: int, out: str, seconds: float) -> int:
    """On a worker: wait ``seconds``, then record that ``element`` was processed."""
    time.sleep(seconds)
    path = os.path.join(out, str(element))
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    return element


def main(argv: list[str]) -> int:
    import apache_beam as beam

    from pipelines.beam_util import pipeline_options, submit

    out, n, seconds, beam_args = argv[0], int(argv[1]), float(argv[2]), argv[3:]
    opts = pipeline_options(beam_args, "submit-test")
    p = beam.Pipeline(options=opts)
    _ = (p | beam.Create(list(range(n)), reshuffle=False)
         | beam.Map(slow_write, out=out, seconds=seconds))
    result = submit(p, opts)
    print(f"submitted {result.state}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
