"""The run-spec flags that ``salbench run`` and ``salbench plan`` share: same names, same
validation (a malformed flag is one line, exit 2)."""

from __future__ import annotations

import click


class RunCommand(click.Command):
    """``run`` reports a malformed flag (unknown option, missing value) as one line, exit 2."""

    def parse_args(self, ctx, args):
        from salbench.errors import UsageError

        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise UsageError(exc.format_message()) from None


def flag_number(text: str | None):
    """A numeric flag's value as int or float when it is one, else the text itself, so that the
    run-spec validation reports ``limit='ten'`` as it would from a config file."""
    if text is None:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


SPEC_OPTIONS = [
    click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML/TOML/JSON run spec; flags override it."),
    click.option("--dataset", help="Dataset spec: synthetic, synthetic?variant=twin, imagenet:/path/to/val?limit=5000, folder:/path?boxes=b.csv"),
    click.option("--methods", help="Comma-separated method names/wildcards (default: every registered method)."),
    click.option("--exclude-methods", help="Comma-separated methods/wildcards to leave out."),
    click.option("--models", help="Source classifiers: zoo:*, resnet50.a1_in1k, NAME@weights.pth, wildcards."),
    click.option("--eval-models", help="Eval classifiers (default: the source classifiers)."),
    click.option("--metrics", "metric_names", help="Comma-separated metric names/wildcards (default: the default metrics; see `salbench metrics list`)."),
    click.option("--exclude-metrics", help="Comma-separated metrics/wildcards to leave out (metrics others require stay)."),
    click.option("--limit", metavar="N", help="Evaluate only the first N images (deterministic)."),
    click.option("--batch-size", metavar="N"),
    click.option("--binarize", help="mean_area (default), alpha_mean, threshold."),
    click.option("--inpaint", help="Inpainting backend: telea (default), biharmonic, ..."),
    click.option("--target", metavar="label|predicted", help="Explain the ground-truth label (default) or the predicted class."),
    click.option("--seed", metavar="N"),
    click.option("--device", help="auto (default), cpu, cuda, cuda:N."),
    click.option("--dtype", metavar="float32|bfloat16|float16"),
    click.option("--workers", metavar="N", help="Data-loading worker processes."),
    click.option("--map-cache", help="Saliency-map cache directory ('auto': $SALBENCH_HOME/maps); later runs reuse stored maps."),
    click.option("--map-precision", metavar="float32|float16|uint8", help="Precision maps are rounded to and stored at."),
    click.option("--plugin", "plugin_files", multiple=True, metavar="FILE", help="A Python file that registers methods (repeatable)."),
    click.option("--import", "plugin_modules", multiple=True, metavar="MODULE", help="A module that registers methods when imported (repeatable)."),
]


def spec_options(fn):
    """The run-spec flags, shared by ``run`` and ``plan`` (same names, same validation)."""
    for option in reversed(SPEC_OPTIONS):
        fn = option(fn)
    return fn


def load_flag_plugins(files: tuple[str, ...] = (), modules: tuple[str, ...] = ()) -> list[str]:
    """Load ``--plugin`` files and ``--import`` modules; a failure is one line naming the flag."""
    from salbench.errors import UsageError
    from salbench.plugins import load_plugin

    for flag, sources in (("--plugin", files), ("--import", modules)):
        for source in sources:
            try:
                load_plugin(source)
            except UsageError as exc:
                raise UsageError(f"{flag} {source}: {exc}") from None
    return [*files, *modules]


def spec_from_flags(config_path, dataset, methods, exclude_methods, models, eval_models, metric_names, exclude_metrics, limit, batch_size,
                     binarize, inpaint, target, seed, device, dtype, workers, map_cache, map_precision, plugin_files=(), plugin_modules=()):
    from salbench.config import RunSpec

    flag_plugins = load_flag_plugins(plugin_files, plugin_modules)  # before the config file, whose keys may name their methods
    spec = RunSpec.from_file(config_path) if config_path else RunSpec()
    return spec.replace(
        plugins=list(dict.fromkeys([*spec.plugins, *flag_plugins])) if flag_plugins else None,
        dataset=dataset, methods=methods, exclude_methods=exclude_methods, models=models, eval_models=eval_models,
        metrics=metric_names, exclude_metrics=exclude_metrics, limit=flag_number(limit), batch_size=flag_number(batch_size),
        binarize=binarize, inpaint=inpaint, target=target, seed=flag_number(seed), device=device, dtype=dtype,
        workers=flag_number(workers), map_cache=map_cache, map_precision=map_precision,
    )
