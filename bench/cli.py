"""The ``salbench`` command line (click). Exit codes: 0 success, 2 bad arguments, 1 failed run."""

from __future__ import annotations

from pathlib import Path

import click

from salbench.cli_spec import RunCommand, load_flag_plugins, spec_from_flags, spec_options
from salbench.errors import SalbenchError, UsageError, exit_codes, one_line

# Commands import what they need when they run, so that ``--help`` and argument errors answer at
# once instead of after loading torch, timm and pandas.


class _Group(click.Group):
    """Maps salbench errors to one-line messages: UsageError -> exit 2, anything else -> exit 1."""

    def invoke(self, ctx):
        with exit_codes():
            return super().invoke(ctx)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="salbench")
def main() -> None:
    """salbench: benchmark saliency methods on image classifiers."""


def _check_out_dir(out: str | None) -> None:
    """``--out`` must be creatable: no existing ancestor of it may be a file."""
    from salbench.errors import UsageError

    if out is None:
        return
    path = Path(out)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--out={out!r}: {str(parent)!r} is a file, not a directory")
            return


@main.command(cls=RunCommand)
@spec_options
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default: results/<dataset>-<spec hash>-<time>).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run (with --out, or the newest run of the same spec).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--dry-run", is_flag=True, help="Print the cost plan (as `salbench plan`) and stop; nothing is written.")
def run(out, resume, no_progress, dry_run, **flags):
    """Run the benchmark (no arguments: the embedded synthetic default with the zoo), then write its report.

    Every flag and config key is validated before any work: a bad value exits 2 with one line.
    A run in which every map failed exits 1 (run.json status: failed).
    """
    from salbench import distributed
    from salbench.report import write_report
    from salbench.runner import run as run_spec

    spec = spec_from_flags(**flags)
    if dry_run:
        from salbench.cli_plan import print_plan

        print_plan(spec, throughput=None, calibrate=True, detail=True)
        return
    _check_out_dir(out)
    run_dir = run_spec(spec, out, resume=resume, progress=not no_progress)
    if not distributed.is_main_process():  # under torchrun, rank 0 reports
        return
    click.echo(f"results: {run_dir}")
    try:
        board = write_report([run_dir], run_dir)["files"]["leaderboard.md"]
    except UsageError:
        raise
    except Exception as exc:  # the tables are complete and intact; only the views are missing
        raise SalbenchError(f"run {str(run_dir)!r} is complete, but writing its report failed ({one_line(exc)}); "
                            f"`salbench report {run_dir}` writes it from the tables") from exc
    click.echo(board.read_text())


@main.group()
def methods() -> None:
    """Registered saliency methods."""


@methods.command("list")
@click.option("--plugin", "plugin_files", multiple=True, metavar="FILE", help="Also load this plugin file (repeatable).")
@click.option("--import", "plugin_modules", multiple=True, metavar="MODULE", help="Also import this plugin module (repeatable).")
def methods_list(plugin_files, plugin_modules) -> None:
    """Registered methods, their capabilities and cost per image. Peer adapters (captum:<class>,
    gradcam:<class>, zennit:<composite>) are not listed: name them in --methods."""
    from salbench.methods import METHODS, create_method

    load_flag_plugins(plugin_files, plugin_modules)

    header = f"{'method':<16} {'family':<10} {'grad':<5} {'layer':<6} {'trained':<8} {'clf-dep':<8} {'stoch':<6} {'fwd/img':>8} {'bwd/img':>8}  description"
    click.echo(header)
    for name in METHODS.names():
        m = create_method(name)
        c = m.capabilities
        fwd, bwd = m.cost()
        yn = lambda b: "yes" if b else "no"  # noqa: E731
        click.echo(f"{name:<16} {c.family:<10} {yn(c.needs_gradients):<5} {yn(c.needs_feature_layer):<6} {yn(c.needs_training):<8} {yn(c.classifier_dependent):<8} {yn(c.stochastic):<6} {fwd:>8g} {bwd:>8g}  {m.description}")


@main.group()
def metrics() -> None:
    """Registered metrics."""


@metrics.command("list")
def metrics_list() -> None:
    """Registered metrics: table, inputs, default parameters, whether a default run computes them, columns."""
    import dataclasses

    from salbench.metrics import METRIC_REGISTRY

    click.echo(f"{'metric':<18} {'table':<13} {'default':<8} {'needs':<28} parameters / columns")
    for name in METRIC_REGISTRY.names():
        m = METRIC_REGISTRY.get(name)
        params = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(m.params).items()) or "-"
        cols = ", ".join(f"{c.column}{c.arrow}" for c in m.columns)
        click.echo(f"{name:<18} {m.table:<13} {'yes' if m.default_selected else 'no':<8} {','.join(sorted(m.needs)):<28} {params}; {cols}")
        if m.description:
            click.echo(f"{'':<18} {m.description}")


@main.group()
def models() -> None:
    """Classifiers: the salbench zoo and timm."""


@models.command("list")
@click.argument("pattern", required=False)
@click.option("--pretrained-only", is_flag=True, help="timm models with pretrained weights only.")
def models_list(pattern, pretrained_only) -> None:
    """Zoo classifiers (with build status) and timm models matching PATTERN."""
    import fnmatch

    import timm

    from salbench import zoo

    pat = pattern or "*"
    for name in zoo.ZOO.names():
        spec = f"zoo:{name}"
        if fnmatch.fnmatch(spec, pat) or fnmatch.fnmatch(name, pat):
            status = "built" if zoo.is_built(name) else "not built (trained on first use)"
            click.echo(f"{spec:<28} {zoo.ZOO.get(name).arch:<28} {status}")
    if pattern and not pattern.startswith("zoo:"):
        for name in timm.list_models(pattern, pretrained=pretrained_only):
            click.echo(name)


@main.group()
def zoo() -> None:
    """The synthetic classifier zoo."""


@zoo.command("build")
@click.option("--names", help="Comma-separated zoo names (default: all).")
@click.option("--force", is_flag=True, help="Retrain even if cached.")
def zoo_build(names, force) -> None:
    """Train and cache the zoo classifiers that are missing."""
    from salbench import zoo as zoo_mod
    from salbench.registry import split_list

    wanted = zoo_mod.ZOO.select(names) if names else None
    metas = zoo_mod.build(wanted, force=force, progress=True)
    for meta in metas:
        click.echo(f"zoo:{meta['name']:<14} val top-1 {100 * meta['val_top1']:.1f}%  trained in {meta['train_time_s']:.0f}s  {zoo_mod.zoo_dir(zoo_mod.ZOO.get(meta['name']))}")
    _ = split_list


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Where to write the report (default: the single run dir, or ./report).")
@click.option("--paired", multiple=True, metavar="A,B", help="Paired comparison of two methods on the same images (difference + bootstrap interval); repeatable.")
@click.option("--paired-metric", "paired_metrics", multiple=True, metavar="METRIC",
              help="Metric(s) for --paired (default: le, om, f1, masked_in_top1, masked_out_top1, inpainted_top1); e.g. le, f1, inpainted_top1, masked_out_top1_self.")
@click.option("--methods", help="Comma-separated methods/wildcards to show (control rows are always shown).")
@click.option("--no-qualitative", is_flag=True, help="Skip the qualitative figure (drawn from the example images the run stored).")
@click.option("--qualitative-images", type=click.IntRange(min=1), default=3, show_default=True,
              help="Images in the qualitative figure (at most the number a run stores: 3).")
@click.option("--strict-protocol", is_flag=True, help="Refuse runs with different protocols instead of reporting them in separate sections.")
@click.option("--n-boot", type=click.IntRange(1, 100000), default=1000, show_default=True, help="Bootstrap resamples for the 95% intervals.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap resampling.")
def report(run_dirs, out, paired, paired_metrics, methods, no_qualitative, qualitative_images, strict_protocol, n_boot, seed) -> None:
    """Leaderboard (Markdown + self-contained HTML), paper tables (md/tex/csv) and figures from run directories' Parquet tables."""
    from salbench.examples import EXAMPLE_COUNT
    from salbench.registry import split_list
    from salbench.report import DEFAULT_PAIRED_METRICS, parse_pairs, write_report
    from salbench.tables import metric_descriptor

    if qualitative_images > EXAMPLE_COUNT:
        raise UsageError(f"--qualitative-images {qualitative_images}: a run stores {EXAMPLE_COUNT} example images; choose 1 to {EXAMPLE_COUNT}")
    dirs = [Path(d) for d in run_dirs]
    out_dir = Path(out) if out else (dirs[0] if len(dirs) == 1 else Path("report"))
    metrics = [m for v in paired_metrics for m in split_list(v)] or list(DEFAULT_PAIRED_METRICS)
    for m in metrics:
        metric_descriptor(m)
    result = write_report(dirs, out_dir, qualitative=not no_qualitative, qualitative_images=qualitative_images,
                          paired=parse_pairs(paired), paired_metrics=metrics, methods=split_list(methods) or None,
                          strict=strict_protocol, n_boot=n_boot, seed=seed)
    click.echo(result["files"]["leaderboard.md"].read_text())
    for name, path in result["files"].items():
        click.echo(f"written: {path}")


def _attach_optional_commands() -> None:
    """Commands that live in their own modules (throughput/compare, training, ...)."""
    import importlib

    for module, names in (("salbench.cli_perf", ("throughput", "compare", "reference")), ("salbench.cli_train", ("train",)), ("salbench.cli_plan", ("plan",))):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        for name in names:
            if hasattr(mod, name):
                main.add_command(getattr(mod, name))


_attach_optional_commands()

if __name__ == "__main__":
    main()
