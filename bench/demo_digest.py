"""Digest of a demo run's products, to show a change left the demo's results untouched.

Runs ``landslides demo`` (``--quick`` by default) for one seed into ``--out`` (or reads a
finished run with ``--no-run``) and writes one JSON: the comparison's ``metrics.json``
(hashed as canonical JSON, and its per-year pixel F1 in the clear), every year's
inventory (feature count, total area), and every probability COG's pixel values (SHA-256
of the decoded array, not of the file, so a different GDAL block order still compares).
``--against`` compares with an earlier digest and exits 1 on any difference::

    .venv/bin/python bench/demo_digest.py --out /tmp/d0 --json before.json
    # ... change the code ...
    .venv/bin/python bench/demo_digest.py --out /tmp/d1 --against before.json
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(obj: Any) -> Any:
    """metrics.json without the fields that name where and when the run happened."""
    if isinstance(obj, dict):
        return {k: _canonical(v) for k, v in sorted(obj.items())
                if k not in ("created", "elapsed_s", "out", "written", "path", "paths")}
    if isinstance(obj, list):
        return [_canonical(v) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj):
        return "<path>"
    return obj


def digest(out: str) -> dict[str, Any]:
    """The digest of the demo products under ``out``."""
    import geopandas as gpd
    import rasterio

    result: dict[str, Any] = {}
    metrics_path = os.path.join(out, "report", "metrics.json")
    with open(metrics_path) as f:
        metrics = json.load(f)
    result["metrics_sha256"] = _sha(json.dumps(_canonical(metrics), sort_keys=True).encode())
    result["pixel_f1"] = {y: (e.get("pixel") or {}).get("f1")
                          for y, e in sorted((metrics.get("years") or {}).items())}
    inventories: dict[str, Any] = {}
    for path in sorted(glob.glob(os.path.join(out, "sweeps", "*", "inventory.gpkg"))):
        year = Path(path).parent.name
        frame = gpd.read_file(path)
        inventories[year] = {"features": len(frame),
                             "area_m2": round(float(frame.geometry.area.sum()), 3)}
    result["inventories"] = inventories
    cogs: dict[str, str] = {}
    pattern = os.path.join(out, "sweeps", "*", "prob", "**", "*.tif")
    for path in sorted(glob.glob(pattern, recursive=True)):
        with rasterio.open(path) as ds:
            cogs[os.path.relpath(path, out)] = _sha(ds.read().tobytes())
    result["probability_cogs"] = cogs
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="The demo's output folder.")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--full", action="store_true", help="The full demo, not --quick.")
    p.add_argument("--no-run", action="store_true", help="Digest a finished run only.")
    p.add_argument("--references", help="The demo's reference images, ';'-separated (default: "
                                        "the demo's own), e.g. to digest a change against a "
                                        "run made before the demo's stack changed.")
    p.add_argument("--json", help="Write the digest here.")
    p.add_argument("--against", help="An earlier digest: exit 1 on any difference.")
    args = p.parse_args(argv)
    if not args.no_run:
        if os.path.exists(args.out):
            print(f"{args.out} exists: give a new folder (a demo there reuses its stages and "
                  f"its files would mix with this run's).")
            return 2
        if args.references is not None:
            import logging

            from pipelines.demo import DemoConfig, run_demo

            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
            refs = tuple(r.strip() for r in args.references.split(";") if r.strip())
            run_demo(DemoConfig(out=args.out, seed=args.seed, quick=not args.full,
                                references=refs))
        else:
            cmd = [sys.executable, "-m", "pipelines.cli", "demo", "--seed", str(args.seed),
                   "--out", args.out] + ([] if args.full else ["--quick"])
            subprocess.run(cmd, check=True, cwd=ROOT)
    result = digest(args.out)
    if not result["probability_cogs"]:
        print(f"No probability COGs under {args.out}/sweeps: is it a demo output?")
        return 1
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(f"{len(result['probability_cogs'])} probability COGs, "
          f"{len(result['inventories'])} inventories, metrics {result['metrics_sha256'][:12]}")
    if args.against:
        before = json.loads(Path(args.against).read_text())
        diffs = [k for k in sorted(set(before) | set(result)) if before.get(k) != result.get(k)]
        for key in diffs:
            if isinstance(result.get(key), dict) and isinstance(before.get(key), dict):
                inner = sorted(k for k in set(before[key]) | set(result[key])
                               if before[key].get(k) != result[key].get(k))
                print(f"DIFFERENT {key}: {', '.join(inner[:8])}"
                      + (f" and {len(inner) - 8} more" if len(inner) > 8 else ""))
            else:
                print(f"DIFFERENT {key}: {before.get(key)} -> {result.get(key)}")
        if diffs:
            return 1
        print(f"identical to {args.against}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
