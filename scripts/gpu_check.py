#!/usr/bin/env python3
"""The one prepared check to run when a GPU is lent (a few minutes on one H100/H200).

    python scripts/gpu_check.py --out gpu-check            # on the GPU machine, after pip install -e '.[peers]'
    python scripts/gpu_check.py --smoke --out /tmp/smoke   # the same steps at toy size on a CPU (the tests run this)

In bf16 + channels-last at batch 128, through the salbench CLI (nothing here is a second
implementation), it measures

1. ``throughput``: gradient and Grad-CAM on ResNet-50 against the bare forward + backward loop,
   and the whole per-batch pipeline with five eval classifiers;
2. ``throughput --peers``: salbench's deletion / insertion and ROAD against their per-image peers
   (the RISE loop, Quantus PixelFlipping, pytorch-grad-cam ROAD), Grad-CAM / gradient against
   pytorch-grad-cam / captum, on ResNet-50;
3. the plan against a measured slice: the README's ImageNet spec with the same architectures
   (random weights with a 10-class head: the cost of a pass does not depend on them) on
   ``--slice`` synthetic 224-px images, ``salbench plan --throughput`` (step 1's speeds) against
   the run's own wall time;
4. the README's ImageNet study (50,000 images) priced with this GPU's speeds
   (``salbench plan --images 50000 --throughput``).

Everything lands under ``--out``; ``summary.md`` collects the ratios and the two plan checks.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "resnet50.a1_in1k"
PIPELINE_EVAL = ["resnet50.a1_in1k", "resnet18.a1_in1k", "efficientnet_b0.ra_in1k", "convnext_tiny.fb_in1k",
                 "vit_small_patch16_224.augreg_in21k_ft_in1k"]


def readme_imagenet_spec() -> str:
    """The README's ImageNet-on-one-GPU spec (the YAML between ``cat > in1k.yaml <<'YAML'`` and ``YAML``)."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"cat > in1k\.yaml <<'YAML'\n(.*?)\nYAML\n", text, re.S)
    if m is None:
        sys.exit("gpu_check: README.md has no `cat > in1k.yaml <<'YAML'` block")
    return m.group(1) + "\n"


def salbench(*args: str, log: Path) -> str:
    """Run ``salbench ARGS`` in this process (one import of torch and timm for every step); its
    output is appended to ``log`` and returned; a failure stops the check."""
    from click.testing import CliRunner

    from salbench.cli import main as cli

    t0 = time.perf_counter()
    res = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    with log.open("a") as f:
        f.write(f"$ salbench {' '.join(args)}\n{res.output}[exit {res.exit_code}, {time.perf_counter() - t0:.1f} s]\n\n")
        if res.exception is not None and not isinstance(res.exception, SystemExit) and res.exc_info:
            import traceback

            f.write("".join(traceback.format_exception(*res.exc_info)))
    if res.exit_code != 0:
        sys.exit(f"gpu_check: `salbench {' '.join(args[:2])} ...` failed (exit {res.exit_code}); see {log}\n{res.output[-2000:]}")
    return res.output


def random_weights(archs: list[str], folder: Path, num_classes: int) -> dict[str, str]:
    """``arch -> arch@file``: seeded random weights with a ``num_classes`` head, so that the slice
    runs the study's architectures on the synthetic classes."""
    import timm
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for arch in archs:
        path = folder / f"{arch}.pth"
        if not path.is_file():
            torch.manual_seed(0)
            torch.save(timm.create_model(arch, pretrained=False, num_classes=num_classes).state_dict(), path)
        out[arch] = f"{arch}@{path}"
    return out


def total_seconds(plan_output: str) -> float | None:
    line = next((ln for ln in plan_output.splitlines() if ln.startswith("total")), "")
    m = re.search(r"([\d.]+)( min| h| d)?\s*$", line)
    if m is None:
        return None
    return float(m.group(1)) * {None: 1, " min": 60, " h": 3600, " d": 86400}[m.group(2)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: checks that every step runs")
    ap.add_argument("--slice", type=int, default=256, help="synthetic images of the measured slice (step 3)")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    if args.smoke:
        cfg = dict(device="cpu", dtype="float32", cl="no", bs=2, size=32, iters=1, warmup=0, rounds=1, peer_images=1, source="resnet18",
                   pipeline=["resnet18", "mobilenetv3_small_050"], slice=min(args.slice, 4))
    else:
        cfg = dict(device="cuda", dtype="bfloat16", cl="yes", bs=128, size=224, iters=10, warmup=3, rounds=3, peer_images=4, source=SOURCE,
                   pipeline=PIPELINE_EVAL, slice=args.slice)
    common = ["--dtypes", cfg["dtype"], "--channels-last", cfg["cl"], "--batch-sizes", str(cfg["bs"]), "--image-size", str(cfg["size"]),
              "--device", cfg["device"], "--iters", str(cfg["iters"]), "--warmup", str(cfg["warmup"])]
    tp = out / "throughput"
    summary = [f"# salbench GPU check ({'smoke, CPU' if args.smoke else cfg['device']}), {time.strftime('%Y-%m-%d %H:%M')}", ""]

    # 1. methods against the bare loop; the pipeline with five eval classifiers (the source first)
    salbench("throughput", "--methods", "gradient,gradcam", "--models", ",".join(cfg["pipeline"]), "--pipeline-eval-models",
             str(len(cfg["pipeline"])), *common, "--out", str(tp), log=log)
    # the study's other eval classifiers: forward speeds for the plans of steps 3 and 4
    study = readme_imagenet_spec()
    import yaml

    spec = yaml.safe_load(study)
    archs = list(dict.fromkeys(spec["models"] + spec["eval_models"]))
    if args.smoke:
        archs = cfg["pipeline"]  # measured in the call above
    else:
        salbench("throughput", "--methods", "gradcam", "--models", ",".join(archs), *common, "--out", str(tp), log=log)
    from salbench.throughput_table import format_table, read_throughput

    summary += ["## 1. Throughput", "", "```", format_table(read_throughput(tp)).strip(), "```", ""]

    # 2. the peers (deletion / insertion, ROAD, Grad-CAM, gradient), same model, batch and device
    peers = salbench("throughput", "--peers", "--peer-model", cfg["source"].split(".")[0], "--peer-batch-size", str(cfg["bs"]),
                     "--peer-rounds", str(cfg["rounds"]), "--peer-images", str(cfg["peer_images"]), "--methods", "gradcam", "--models",
                     cfg["source"], "--no-baseline", *common, "--out", str(out / "peers"), log=log)
    summary += ["## 2. Peers", "", "```", *[ln for ln in peers.splitlines() if "speed-up" in ln or " vs " in ln], "```", ""]

    # 3. the plan against a measured slice of the study (same architectures, synthetic images)
    weights = random_weights(archs, out / "weights", num_classes=10)
    slice_spec = {**spec, "dataset": f"synthetic?n={cfg['slice']}&size={cfg['size']}", "map_cache": None, "workers": 0 if args.smoke else spec.get("workers", 0),
                  "models": [weights[a] for a in (spec["models"] if not args.smoke else cfg["pipeline"][:1])],
                  "eval_models": [weights[a] for a in (spec["eval_models"] if not args.smoke else cfg["pipeline"])],
                  "batch_size": cfg["bs"], "dtype": cfg["dtype"], "channels_last": cfg["cl"] == "yes", "device": cfg["device"]}
    (out / "slice.yaml").write_text(yaml.safe_dump(slice_spec, sort_keys=False))
    planned = salbench("plan", "--config", str(out / "slice.yaml"), "--throughput", str(tp), "--brief", log=log)
    salbench("run", "--config", str(out / "slice.yaml"), "--out", str(out / "slice-run"), "--no-progress", log=log)
    meta = json.loads((out / "slice-run" / "run.json").read_text())
    est, measured = total_seconds(planned), float(meta["wall_time_s"])
    stages = meta.get("timing", {}).get("stages", {})
    ratio = f"{est / measured:.2f}" if est else "n/a"
    summary += ["## 3. Plan vs a measured slice", "", f"{cfg['slice']} synthetic {cfg['size']}-px images, the study's methods, metrics and "
                f"architectures: plan {est if est is None else round(est, 1)} s, measured {measured:.1f} s (plan / measured = {ratio})", "",
                "```", planned.strip(), "```", "", "measured stages (s): " + json.dumps({k: round(v, 1) for k, v in stages.items()}), ""]

    # 4. the README's study, priced with this device's speeds
    if not args.smoke:
        (out / "in1k.yaml").write_text(study)
        full = salbench("plan", "--config", str(out / "in1k.yaml"), "--images", "50000", "--throughput", str(tp), "--brief", log=log)
        summary += ["## 4. The README's ImageNet study on this device (plan)", "", "```", full.strip(), "```", ""]
    (out / "summary.md").write_text("\n".join(summary))
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
