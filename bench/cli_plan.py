"""``salbench plan`` (= ``salbench run --dry-run``): the cost of a run, printed before any work.

Loads the run's classifiers that are already available (a zoo classifier that is not built yet is
not trained here: its passes are counted, its time is not), creates the methods without
preparing them, and prices the passes with a throughput table (``--throughput``) or a quick
calibration on this machine, which is saved under ``$SALBENCH_HOME/plan/`` so that later runs'
progress bars show the estimated time from their first step.

Before a download: ``--images N`` plans for N images of the spec's dataset without opening it
(``planned_dataset``), and a timm classifier whose weights are not here (hub offline, file not
there yet) is priced as the same architecture with random weights: a pass costs the same.
"""

from __future__ import annotations

from pathlib import Path

import click

from salbench.errors import UsageError


def _load_for_pricing(name: str, options, notes: list[str]):
    """The classifier ``name``, or, when its weights are not on this machine, its architecture with
    random weights (a note says so); a zoo classifier is never replaced."""
    from dataclasses import replace

    from salbench.classifiers import load_classifier

    try:
        return load_classifier(name, options)
    except UsageError as exc:
        if name.startswith(("zoo:", "random:")):
            raise
        arch = name.split("@", 1)[0]
        stand_in = f"random:{arch}"
        clf = load_classifier(stand_in, replace(options, overrides={stand_in: dict(options.overrides.get(name, {}))}))
        notes.append(f"{name}: {str(exc).splitlines()[0]}; priced as {stand_in} (a pass costs the same with any weights)")
        return clf


def make_plan(spec, throughput: str | None, calibrate: bool, log=lambda m: None, images: int | None = None,
              calibration_batch: int | None = None):
    """(plan, notes): resolve the spec, load available classifiers, price the passes. ``images``:
    plan for that many images of the spec's dataset without opening it; ``calibration_batch``:
    images per calibration pass (default: the run's batch size)."""
    from salbench import zoo
    from salbench.classifiers import ModelOptions
    from salbench.device import resolve_device, resolve_dtype
    from salbench.methods import create_method
    from salbench.plan import Speeds, build_plan, check_pairs, save_speeds, speeds_from_throughput
    from salbench.runner import resolve
    from salbench.throughput_table import read_throughput

    notes: list[str] = []
    if images is not None:
        from salbench.planned_dataset import PlannedDataset

        resolved = resolve(spec, dataset=PlannedDataset(spec.dataset, images))
        size = "x".join(map(str, resolved.dataset.image_size))
        notes.append(f"the dataset was not opened: planned for {len(resolved.dataset)} images of {size} px "
                     f"({'with' if resolved.dataset.has_masks else 'without'} pixel masks)")
    else:
        resolved = resolve(spec)
    device = resolve_device(spec.device)
    options = ModelOptions(device=device, amp_dtype=resolve_dtype(spec.dtype), channels_last=spec.channels_last, overrides=spec.model_overrides)
    classifiers = {}
    for name in dict.fromkeys(resolved.models + resolved.eval_models):
        if name.startswith("zoo:") and not zoo.is_built(name[4:]):
            notes.append(f"{name} is not built yet: the run trains it first (not in the estimate; `salbench zoo build`)")
            continue
        classifiers[name] = _load_for_pricing(name, options, notes)
    methods = {m: create_method(m, **resolved.method_params.get(m, {})) for m in resolved.methods}
    usable = [m for m in resolved.models if m in classifiers]
    not_applicable = check_pairs(methods, classifiers, usable)
    if throughput:
        path = Path(throughput)
        if path.is_file():
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            table = read_throughput(path)
        speeds = speeds_from_throughput(table, list(classifiers), int(resolved.dataset.image_size[-1]), spec.batch_size,
                                        f"throughput table {throughput}", spec.dtype)
    elif calibrate and classifiers:
        from salbench.plan import calibrate as measure

        log("calibrating: each classifier's forward and backward pass on this machine ...")
        speeds, rows = measure(resolved, classifiers, device, batch_size=calibration_batch)
        notes.append(f"speeds saved to {save_speeds(rows, device)} (later runs' progress bars use them)")
    else:
        speeds = Speeds()
    return build_plan(resolved, methods, speeds, not_applicable), notes


def print_plan(spec, throughput: str | None, calibrate: bool, detail: bool, images: int | None = None,
               calibration_batch: int | None = None) -> None:
    from salbench.plan import format_plan

    plan, notes = make_plan(spec, throughput, calibrate, log=lambda m: click.echo(m, err=True), images=images,
                            calibration_batch=calibration_batch)
    click.echo(format_plan(plan, detail=detail))
    for note in notes:
        click.echo(f"note: {note}")
    click.echo("The estimate covers the classifier passes, composing the masked images and the localisation stage; "
               "loading, writing and the report add a few seconds. It is an estimate, not a measurement.")


def plan_command():
    from salbench.cli_spec import RunCommand, spec_from_flags, spec_options

    @click.command("plan", cls=RunCommand)
    @spec_options
    @click.option("--throughput", type=click.Path(dir_okay=True), help="Price passes with this throughput table (a `salbench throughput` output dir or .parquet) instead of calibrating.")
    @click.option("--brief", is_flag=True, help="Stages and total only, not every (method, source) pair.")
    @click.option("--images", type=click.IntRange(min=1), default=None,
                  help="Plan for N images of the dataset without opening it (a dataset not on this machine yet): "
                       "its size from the spec, synthetic content for the calibration.")
    @click.option("--calibration-batch", type=click.IntRange(min=1), default=None,
                  help="Images per calibration pass (default: the run's batch size; smaller is quicker on a CPU).")
    def plan(throughput, brief, images, calibration_batch, **flags):
        """Print the cost plan of a run before any work: classifier passes per (method, source) and
        per stage, and the expected wall time. Takes the same flags and config as `salbench run`."""
        spec = spec_from_flags(**flags)
        if throughput and not Path(throughput).exists():
            raise UsageError(f"--throughput={throughput!r}: no such file or directory")
        print_plan(spec, throughput, calibrate=throughput is None, detail=not brief, images=images, calibration_batch=calibration_batch)

    return plan


plan = plan_command()
