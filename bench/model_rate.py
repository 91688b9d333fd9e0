"""The default model's throughput per vCPU, the figure `landslides plan` uses without --model.

Builds the U-Net that `landslides train` builds by default (16 filters, depth 5) for the
export's 8 default bands, untrained (speed does not depend on the weights), saves it as
an artifact and times it with ``pipelines.plan.calibrate``: batches of random 128-px
tiles on one TensorFlow thread, i.e. one vCPU, three times. Other work on the machine only
slows a run down, so the fastest is the vCPU's rate. Prints megapixels per second per
vCPU and what ``pipelines.plan.DEFAULT_MPX_PER_VCPU_S`` holds. Run::

    .venv/bin/python bench/model_rate.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    from model.artifact import save_artifact
    from model.unet import build_unet
    from pipelines import plan
    from pipelines.options.export import DEFAULT_BANDS

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "unet")
        model = build_unet(DEFAULT_BANDS, patch_size=plan.DEFAULT_PATCH)
        save_artifact(model, path, DEFAULT_BANDS, patch_size=plan.DEFAULT_PATCH,
                      size_multiple=plan.DEFAULT_SIZE_MULTIPLE, saved_model=False)
        rates = [plan.calibrate(path, plan.DEFAULT_PATCH) for _ in range(3)]
    print(f"default U-Net, {len(DEFAULT_BANDS)} bands, {plan.DEFAULT_PATCH}-px windows, one "
          f"thread: {max(rates):.2f} Mpx/s per vCPU (fastest of 3 runs: "
          f"{', '.join(f'{r:.3f}' for r in rates)}); pipelines.plan.DEFAULT_MPX_PER_VCPU_S = "
          f"{plan.DEFAULT_MPX_PER_VCPU_S}")


if __name__ == "__main__":
    main()
