"""``salbench throughput`` and ``salbench compare`` (attached to the main group by ``salbench.cli``).

Both commands map salbench errors to exit codes themselves (2: bad arguments or directories,
1: failed), so they behave the same standalone and under the main group.
"""

from __future__ import annotations

import datetime as _dt
import functools
import sys
from pathlib import Path

import click

from salbench.errors import SalbenchError, UsageError, exit_codes
from salbench.registry import split_list

TRI = click.Choice(["no", "yes", "both"])
_TRI = {"no": [False], "yes": [True], "both": [False, True]}


def _exit_codes(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with exit_codes():
            return fn(*args, **kwargs)

    return wrapper


def _int_list(value: str, what: str) -> list[int]:
    try:
        out = [int(v) for v in split_list(value)]
    except ValueError:
        raise UsageError(f"{what} {value!r}: expected comma-separated integers, e.g. 8,32") from None
    if not out or any(v < 1 for v in out):
        raise UsageError(f"{what} {value!r}: expected positive integers")
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--methods", default="*", show_default=True, help="Comma-separated methods/wildcards ('*': every method that needs no trained checkpoint).")
@click.option("--models", default="resnet18", show_default=True, help="Classifiers: plain timm names (random init), wildcards, zoo:NAME, NAME@weights.")
@click.option("--batch-sizes", default="8", show_default=True, help="Comma-separated batch sizes.")
@click.option("--dtypes", default="float32", show_default=True, help="Comma-separated: float32, bfloat16, float16 (autocast).")
@click.option("--channels-last", type=TRI, default="no", show_default=True, help="Measure with channels_last memory format: no, yes or both.")
@click.option("--compile", "compile_", type=TRI, default="no", show_default=True, help="torch.compile the classifier: no, yes or both (failures become error rows).")
@click.option("--image-size", type=int, default=224, show_default=True, help="Side of the square input images (classifiers resize to their own input size).")
@click.option("--iters", type=int, default=10, show_default=True, help="Timed iterations per configuration (the median is reported).")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed warm-up iterations per configuration.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--pipeline-eval-models", type=int, default=0, show_default=True, help="Also time the whole evaluation pipeline per batch with N eval classifiers (0: skip).")
@click.option("--inpaint", default="telea", show_default=True, help="Inpainting backend of the pipeline measurement.")
@click.option("--baseline/--no-baseline", default=True, show_default=True, help="Also time a plain forward + backward-to-input pass per model.")
@click.option("--pretrained", is_flag=True, help="Load the named pretrained weights instead of random init (cost does not depend on weights).")
@click.option("--peers", is_flag=True, help="Also compare gradient / Grad-CAM with captum / pytorch-grad-cam, and deletion / insertion / ROAD with their "
              "per-image peers (the RISE loop, Quantus PixelFlipping, pytorch-grad-cam ROAD) (needs captum and grad-cam; quantus optional).")
@click.option("--peer-model", default="resnet18", show_default=True, help="CNN for --peers.")
@click.option("--peer-batch-size", type=int, default=32, show_default=True)
@click.option("--peer-rounds", type=int, default=5, show_default=True, help="Interleaved timing rounds for --peers.")
@click.option("--peer-images", type=click.IntRange(min=1), default=4, show_default=True,
              help="Images the per-image faithfulness peers run on (their time is scaled to --peer-batch-size; salbench runs the whole batch).")
@click.option("--threads", type=int, help="CPU intra-op threads (torch.set_num_threads; default: torch's choice).")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory (default: results/throughput-<time>); throughput.parquet there is merged.")
@click.option("--quiet", is_flag=True, help="Print only the summary table.")
@_exit_codes
def throughput(methods, models, batch_sizes, dtypes, channels_last, compile_, image_size, iters, warmup, device, pipeline_eval_models,
               inpaint, baseline, pretrained, peers, peer_model, peer_batch_size, peer_rounds, peer_images, threads, out, quiet):
    """Images/s, ms per batch and peak memory per method x classifier x batch size x dtype.

    Writes OUT/throughput.parquet (rows of a configuration measured again replace the old ones).
    """
    from salbench import throughput as tp

    cfg = tp.ThroughputConfig(
        methods=split_list(methods), models=split_list(models), batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
        dtypes=split_list(dtypes), channels_last=_TRI[channels_last], compiled=_TRI[compile_], image_size=image_size,
        iters=iters, warmup=warmup, device=device, pipeline_eval_models=pipeline_eval_models, baseline=baseline,
        pretrained=pretrained, inpaint=inpaint, threads=threads,
    )
    if peers:
        missing = [dist for m, (_mod, dist) in tp.PEER_PACKAGES.items() if not tp.peers_available()[m]]
        if missing:
            raise UsageError(f"--peers needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    out_dir = Path(out) if out else Path("results") / f"throughput-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {str(out_dir)!r} exists and is not a directory")
    table = tp.run_throughput(cfg, out_dir, log=None if quiet else click.echo)
    if peers:
        if threads:
            import torch

            torch.set_num_threads(threads)
        from salbench.faithfulness_peers import faithfulness_peer_comparison

        results = tp.peer_comparison(peer_model, batch_size=peer_batch_size, image_size=image_size, device=device, rounds=peer_rounds)
        results += faithfulness_peer_comparison(peer_model, batch_size=peer_batch_size, image_size=image_size, device=device,
                                                rounds=peer_rounds, peer_images=min(peer_images, peer_batch_size))
        click.echo("peers (same model, batch and device; interleaved rounds, medians):")
        for r in results:
            click.echo("  " + r.line())
        tp.write_throughput(out_dir, tp.peer_rows(results, run_id=table.column("run_id")[0].as_py() if table.num_rows else "peers"))
    click.echo(tp.format_table(table))
    click.echo(f"written: {out_dir / tp.THROUGHPUT_FILE}")
    errors = [e for e in table.column("error").to_pylist() if e]
    if table.num_rows and len(errors) == table.num_rows:
        raise SalbenchError(f"no configuration could be measured (first error: {errors[0]})")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("old", type=click.Path())
@click.argument("new", type=click.Path())
@click.option("--metric-tol", type=float, default=0.5, show_default=True, help="Largest allowed move of a metric mean, in percentage points (either direction).")
@click.option("--throughput-drop", type=float, default=10.0, show_default=True, help="Largest allowed drop of images/s, in percent.")
@click.option("--ci-tol", type=float, default=0.0, show_default=True,
              help="Against a reference (OLD written by `salbench reference`): allow a move up to this many times the reference value's 95% interval half-width, where larger than --metric-tol "
                   "(a 0% / 100% value with a zero-width interval: 150/n pp, the rule of three).")
@click.option("--all", "show_all", is_flag=True, help="Print every compared value, not only regressions.")
@_exit_codes
def compare(old, new, metric_tol, throughput_drop, ci_tol, show_all):
    """Compare run directory NEW against baseline OLD; exit 1 on a regression beyond tolerance.

    Metrics per method and source classifier (LE, OM, F1, top-1 on each image variant) and, when
    both directories have throughput.parquet, images/s per configuration. OLD may be a reference
    (`salbench reference`: a committed leaderboard summary with its intervals).
    """
    from salbench.compare import compare_runs, format_comparison

    result = compare_runs(old, new, metric_tol=metric_tol, throughput_drop=throughput_drop, ci_tol=ci_tol)
    click.echo(format_comparison(result, show_all=show_all))
    if not result.ok:
        sys.exit(1)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path())
@click.argument("out_dir", type=click.Path(file_okay=False))
@_exit_codes
def reference(run_dir, out_dir):
    """Write OUT_DIR as the guarded reference of the complete run RUN_DIR: its leaderboard summary
    (means and 95% intervals, no per-image rows) and provenance, for `salbench compare OUT_DIR NEW`."""
    from salbench.reference import write_reference

    if not (Path(run_dir) / "run.json").is_file():
        raise UsageError(f"{run_dir!r} is not a salbench run directory (no run.json)")
    path = write_reference(run_dir, out_dir)
    click.echo(f"reference written: {path} (leaderboard.json, run.json)")
