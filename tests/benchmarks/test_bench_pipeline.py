"""The whole per-batch evaluation (runner.Evaluator.evaluate_batch) on small classifiers."""

from __future__ import annotations

import pytest
import torch

from salbench.datasets.base import Batch
from salbench.throughput import ThroughputConfig, make_pipeline_evaluator, synthetic_inputs

from testutils import make_classifier


@pytest.mark.parametrize("inpaint", ["telea", "pushpull"])
@pytest.mark.parametrize("method", ["gradcam", "gradient"])
def test_evaluate_batch(benchmark, method, inpaint):
    dev = torch.device("cpu")
    clfs = {"cnn": make_classifier("test_resnet", size=32), "vit": make_classifier("test_vit", size=32, img_size=32, patch_size=8)}
    cfg = ThroughputConfig(methods=[method], models=["cnn"], image_size=32, inpaint=inpaint, device="cpu")
    ev = make_pipeline_evaluator("cnn", clfs, ["cnn", "vit"], [method], cfg, "float32", False, dev)
    x, t, boxes, valid = synthetic_inputs(8, 32, 10, dev)
    batch = Batch(index=torch.arange(8), ids=[str(i) for i in range(8)], images=x, labels=t, boxes=boxes, box_valid=valid)
    benchmark.group = "pipeline[8x32px, 2 eval]"
    tables, counts = benchmark(ev.evaluate_batch, batch)
    assert counts["errors"] == 0 and tables["agnosticism"].num_rows == 8 * 2 * 4
