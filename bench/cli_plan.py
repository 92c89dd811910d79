"""``salbench plan`` (= ``salbench run --dry-run``): the cost of a run, printed before any work.

Loads the run's classifiers that are already available (a zoo classifier that is not built yet is
not trained here: its passes are counted, its time is not), creates the methods without
preparing them, and prices the passes with a throughput table (``--throughput``) or a quick
calibration on this machine, which is saved under ``$SALBENCH_HOME/plan/`` so that later runs'
progress bars show the estimated time from their first step.
"""

from __future__ import annotations

from pathlib import Path

import click

from salbench.errors import UsageError


def make_plan(spec, throughput: str | None, calibrate: bool, log=lambda m: None):
    """(plan, notes): resolve the spec, load available classifiers, price the passes."""
    from salbench import zoo
    from salbench.classifiers import ModelOptions, load_classifier
    from salbench.device import resolve_device, resolve_dtype
    from salbench.methods import create_method
    from salbench.plan import Speeds, build_plan, check_pairs, save_speeds, speeds_from_throughput
    from salbench.runner import resolve
    from salbench.throughput_table import read_throughput

    resolved = resolve(spec)
    device = resolve_device(spec.device)
    notes: list[str] = []
    options = ModelOptions(device=device, amp_dtype=resolve_dtype(spec.dtype), channels_last=spec.channels_last, overrides=spec.model_overrides)
    classifiers = {}
    for name in dict.fromkeys(resolved.models + resolved.eval_models):
        if name.startswith("zoo:") and not zoo.is_built(name[4:]):
            notes.append(f"{name} is not built yet: the run trains it first (not in the estimate; `salbench zoo build`)")
            continue
        classifiers[name] = load_classifier(name, options)
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
        speeds = speeds_from_throughput(table, list(classifiers), int(resolved.dataset.image_size[-1]), spec.batch_size, f"throughput table {throughput}")
    elif calibrate and classifiers:
        from salbench.plan import calibrate as measure

        log("calibrating: each classifier's forward and backward pass on this machine ...")
        speeds, rows = measure(resolved, classifiers, device)
        notes.append(f"speeds saved to {save_speeds(rows, device)} (later runs' progress bars use them)")
    else:
        speeds = Speeds()
    return build_plan(resolved, methods, speeds, not_applicable), notes


def print_plan(spec, throughput: str | None, calibrate: bool, detail: bool) -> None:
    from salbench.plan import format_plan

    plan, notes = make_plan(spec, throughput, calibrate, log=lambda m: click.echo(m, err=True))
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
    def plan(throughput, brief, **flags):
        """Print the cost plan of a run before any work: classifier passes per (method, source) and
        per stage, and the expected wall time. Takes the same flags and config as `salbench run`."""
        spec = spec_from_flags(**flags)
        if throughput and not Path(throughput).exists():
            raise UsageError(f"--throughput={throughput!r}: no such file or directory")
        print_plan(spec, throughput, calibrate=throughput is None, detail=not brief)

    return plan


plan = plan_command()
