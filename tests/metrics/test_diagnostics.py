"""Method diagnostics end to end: Integrated Gradients' completeness gap lands in the localization table."""

from __future__ import annotations

import numpy as np
import torch

from salbench.datasets.base import Batch
from salbench.metrics import MapContext, metrics_for


def test_completeness_gap_reads_the_methods_diagnostics_and_is_nan_without():
    metric = next(m for m in metrics_for("localization") if m.name == "completeness_gap")
    b = Batch(index=torch.arange(3), ids=["a", "b", "c"], images=torch.rand(3, 3, 8, 8), labels=torch.zeros(3, dtype=torch.long),
              boxes=torch.zeros(3, 1, 4), box_valid=torch.zeros(3, 1, dtype=torch.bool))
    ctx = MapContext(maps=torch.rand(3, 8, 8), binary=torch.zeros(3, 8, 8, dtype=torch.bool), box=torch.zeros(3, 4),
                     box_valid=torch.zeros(3, dtype=torch.bool), batch=b)
    assert torch.isnan(metric.compute(ctx)["completeness_gap"]).all()
    ctx.diagnostics = {"completeness_gap": torch.tensor([0.1, 0.2, 0.3])}
    assert torch.equal(metric.compute(ctx)["completeness_gap"], torch.tensor([0.1, 0.2, 0.3]))


def test_a_run_stores_the_completeness_gap_of_integrated_gradients(tmp_path):
    from salbench import zoo
    from salbench.config import RunSpec
    from salbench.results import read_table
    from salbench.runner import run
    from testutils import tiny_resnet_recipe

    zoo.register_recipe(tiny_resnet_recipe("diag-cnn", seed=21), replace=True)
    spec = RunSpec(dataset="synthetic?n=6&size=32&classes=4", models=["zoo:diag-cnn"], batch_size=4, device="cpu",
                   methods=["integrated_gradients", "gradcam"], method_params={"integrated_gradients": {"steps": 64}})
    out = run(spec, tmp_path / "r", progress=False)
    loc = read_table(out, "localization")
    ig = loc[loc.method == "integrated_gradients"].completeness_gap.to_numpy()
    assert len(ig) == 6 and np.isfinite(ig).all() and (ig >= 0).all() and ig.max() < 0.2
    assert loc[loc.method == "gradcam"].completeness_gap.isna().all()
