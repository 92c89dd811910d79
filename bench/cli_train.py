"""``salbench train ...``: train CASM maskers and run the CASM experiments (attached by salbench.cli).

    salbench train casm      [--name NAME] [--thinning L100] [--score entropy] [--share-encoder/--no-share-encoder]
                             [--lambda-r X] [--steps N] [--classifier zoo:resnet] [--dataset synthetic] ...
    salbench train ablation  [--steps N] [--full] [--limit N]        # Table 2: score x sharing x thinning
    salbench train unseen    [--seen 8,5,2] [--steps N] [--limit N]  # Table 3: LE on seen vs unseen classes
    salbench train twin      [--methods casm,casm-baseline] [--limit N]
    salbench train summary   RUN_DIR [--methods ...]                 # LE/F1/agnosticism with bootstrap CIs

Every command imports the training and evaluation machinery (torch, timm, the runner) in its body:
this module is imported by ``salbench.cli`` on every invocation, and ``salbench --help`` or a bad
argument must not pay seconds of imports.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from salbench.errors import UsageError
from salbench.registry import split_list


def _ints(value: str | None) -> tuple[int, ...] | None:
    from salbench.casm.spec import class_tuple  # see the module docstring: deferred heavy imports

    return class_tuple(value)


def _spec_options(fn):
    """Training-spec options shared by the subcommands; unset options keep ``CasmSpec``'s defaults."""
    opts = [
        click.option("--classifier", help="Classifier f / encoder: zoo:<name> or a timm architecture (default: zoo:resnet)."),
        click.option("--init", type=click.Choice(["pretrained", "scratch"]), help="Start f from its trained weights (default) or from scratch."),
        click.option("--dataset", help="Training data: a synthetic spec (its train split; default: synthetic) or "
                     "imagenet-train:<folder> (ILSVRC2012 train folder, one subfolder per synset)."),
        click.option("--train-images", type=int, help="Training images (default: 20000; 0 with imagenet-train: all)."),
        click.option("--batch-size", type=int, help="Batch size (default: CasmSpec's)."),
        click.option("--lr-classifier", type=float, help="Learning rate of the classifier f (and of a separate encoder)."),
        click.option("--lr-masker", type=float, help="Learning rate of the decoder."),
        click.option("--lambda-r", type=float, help="Area weight lambda_R (default: the per-thinning default)."),
        click.option("--seed", type=int, help="Seed (default: 0)."),
        click.option("--threads", type=int, help="CPU threads for training (default: $SALBENCH_TRAIN_THREADS or half the cores)."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _base_spec(threads=None, **kw):
    from salbench.casm.spec import CasmSpec

    if threads is not None:  # read by salbench.casm.default_threads() for every training below
        if threads < 1:
            raise UsageError(f"--threads {threads}: expected a positive integer")
        os.environ["SALBENCH_TRAIN_THREADS"] = str(threads)
    return CasmSpec(**{k: v for k, v in kw.items() if v is not None})


@click.group()
def train() -> None:
    """Train CASM maskers (cached under $SALBENCH_HOME/casm) and run the CASM experiments."""


@train.command("casm")
@click.option("--name", help="Masker name, registered as method casm-<name>. Default: 'casm' (method casm), "
              "or 'baseline' (method casm-baseline) with --thinning F; with the default spec these are the embedded pair.")
@click.option("--thinning", default="L100", show_default=True, help="F, L, FL, L100, L1000 (or L<N>).")
@click.option("--score", type=click.Choice(["entropy", "classification"]), default="entropy", show_default=True)
@click.option("--share-encoder/--no-share-encoder", default=True, show_default=True, help="Masker encoder = the classifier's trunk, or a separate copy.")
@click.option("--steps", type=int, help="Training steps (default: CasmSpec's, the embedded pair's).")
@click.option("--train-classes", help="Train on these classes only, e.g. 0,1,2,3,4 or 0-4 (default: all).")
@click.option("--checkpoint-every", type=int, help="Resumable checkpoint period in steps (default: 100).")
@click.option("--force", is_flag=True, help="Retrain even if cached.")
@click.option("--device", default="cpu", show_default=True, help="Training device: cpu, cuda, cuda:1, ...")
@click.option("--workers", type=int, default=0, show_default=True, help="Image-decoding processes for imagenet-train data (0: in the training process).")
@_spec_options
def train_casm(name, thinning, score, share_encoder, steps, train_classes, checkpoint_every, force, device, workers, no_progress, **common):
    """Train (or resume, or reuse) one masker; prints its directory and method name."""
    from salbench import casm
    from salbench.device import resolve_device
    from salbench.methods.casm import register_cached_maskers

    name = name or ("baseline" if thinning == "F" else "casm")
    spec = _base_spec(**common, name=name, thinning=thinning, score=score, share_encoder=share_encoder, steps=steps,
                      train_classes=_ints(train_classes), checkpoint_every=checkpoint_every)
    if workers < 0:
        raise UsageError(f"--workers {workers}: expected 0 or a positive number of processes")
    d = casm.train(spec, force=force, progress=not no_progress, device=resolve_device(device), workers=workers)
    meta = casm.read_meta(d)
    register_cached_maskers()
    click.echo(f"method {meta['method']}: {d}")
    click.echo(f"  thinning {spec.thinning}, score {spec.score}, {'shared' if spec.share_encoder else 'separate'} encoder, lambda_R {spec.lam:g}, {spec.steps} steps")
    # train_time_s covers every step, those before a resume included (it is carried in the checkpoint)
    line = f"  trained in {meta['train_time_s']:.0f}s ({meta['train_time_s'] / spec.steps:.3f} s/step)"
    if meta.get("val_area") is not None:
        line += f"; val mask area {meta['val_area']:.3f}, f clean/masked top-1 {100 * meta['val_clean_top1']:.1f}%/{100 * meta['val_masked_top1']:.1f}%"
    click.echo(line)


def _bools(value: str | None) -> list[bool] | None:
    if value is None:
        return None
    table = {"yes": True, "shared": True, "true": True, "1": True, "no": False, "separate": False, "false": False, "0": False, "both": None}
    out: list[bool] = []
    for v in value.split(","):
        v = v.strip().lower()
        if v not in table:
            raise UsageError(f"--share {value!r}: expected yes, no or both")
        out.extend([True, False] if table[v] is None else [table[v]])
    return out


@train.command("ablation")
@click.option("--steps", type=int, default=150, show_default=True, help="Training steps per setting.")
@click.option("--full", is_flag=True, help="The full grid: 2 scores x 2 sharings x 5 thinnings (default: 7 settings).")
@click.option("--scores", help="Comma-separated: entropy,classification (implies a grid).")
@click.option("--share", help="yes, no or both (implies a grid).")
@click.option("--thinnings", help="Comma-separated thinnings (implies a grid).")
@click.option("--models", default="zoo:resnet", show_default=True, help="Source classifier of the evaluation run.")
@click.option("--eval-models", default="zoo:*", show_default=True)
@click.option("--limit", type=int, default=200, show_default=True, help="Validation images evaluated.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory.")
@_spec_options
def train_ablation(steps, full, scores, share, thinnings, models, eval_models, limit, out, no_progress, **common):
    """Table 2: train a masker per (score, encoder sharing, thinning) and tabulate LE, F1, inpainted top-1."""
    from salbench.casm import experiments, parse_thinning

    for t in split_list(thinnings) if thinnings else []:
        parse_thinning(t)
    settings = experiments.ablation_settings(full, split_list(scores) or None if scores else None, _bools(share), split_list(thinnings) if thinnings else None)
    run_dir, rows = experiments.run_ablation(steps=steps, settings=settings, base=_base_spec(**common), limit=limit, models=models,
                                      eval_models=eval_models, out=out, progress=not no_progress)
    click.echo((Path(run_dir) / "ablation.md").read_text())
    click.echo(f"written: {run_dir}/ablation.md, ablation.csv")


@train.command("unseen")
@click.option("--seen", default="8,5,2", show_default=True, help="Numbers of seen classes (classes 0..k-1), one masker each.")
@click.option("--thinning", default="L", show_default=True)
@click.option("--steps", type=int, default=300, show_default=True, help="Training steps per masker.")
@click.option("--models", default="zoo:resnet", show_default=True)
@click.option("--limit", type=int, default=500, show_default=True)
@click.option("--out", type=click.Path(file_okay=False))
@_spec_options
def train_unseen(seen, thinning, steps, models, limit, out, no_progress, **common):
    """Table 3: train on a subset of classes, report LE on seen and on unseen classes."""
    from salbench.casm import experiments

    try:
        ks = tuple(int(v) for v in seen.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--seen {seen!r}: expected comma-separated class counts, e.g. 8,5,2") from None
    run_dir, _ = experiments.run_unseen(seen=ks, steps=steps, base=_base_spec(**common, thinning=thinning), limit=limit, models=models,
                                 out=out, progress=not no_progress)
    click.echo((Path(run_dir) / "unseen.md").read_text())
    click.echo(f"written: {run_dir}/unseen.md, unseen.csv")


@train.command("twin")
@click.option("--methods", default="casm,casm-baseline", show_default=True)
@click.option("--models", default="zoo:resnet", show_default=True, help="Source classifier passed to the methods.")
@click.option("--limit", type=int, default=500, show_default=True)
@click.option("--min-cover", type=float, default=0.5, show_default=True, help="Share of a copy's box the binary mask must cover.")
@click.option("--binarize", default="mean_area", show_default=True)
def train_twin(methods, models, limit, min_cover, binarize):
    """Twin variant: how often each method's binary mask covers both copies of the object."""
    from salbench.casm import experiments
    from salbench.methods import METHODS

    names = METHODS.select(methods)
    rows = experiments.twin_coverage(names, n=limit, source_model=models, min_cover=min_cover, binarize=binarize)
    click.echo("| method | both copies % (boxes) | one copy % | none % | both copies % (object pixels) | mean box cover | mask area | images |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["both_ci"]
        click.echo(f"| {r['method']} | {r['both']:.1f} [{lo:.1f}, {hi:.1f}] | {r['one']:.1f} | {r['none']:.1f} | {r['both_pixels']:.1f} | {r['mean_box_cover']:.2f} | {r['area']:.3f} | {r['images']} |")


@train.command("summary")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--methods", help="Comma-separated methods (default: all in the run).")
@click.option("--source-model", help="Source classifier (default: the first).")
@click.option("--eval-models", help="Eval classifiers averaged (default: all but the source).")
@click.option("--diff", help="A,B: paired differences A - B per variant, with paired bootstrap CIs.")
def train_summary(run_dir, methods, source_model, eval_models, diff):
    """LE, F1 and cross-classifier masked-in/out/inpainted top-1 with bootstrap 95% CIs."""
    from salbench.casm import summaries

    rows = summaries.summarize_run(run_dir, split_list(methods) or None, source_model=source_model, eval_models=split_list(eval_models) or None)
    if not rows:
        raise UsageError(f"{run_dir}: no localisation rows for the requested methods")
    click.echo(f"source {rows[0]['source_model']}, eval {', '.join(rows[0]['eval_models'])}")
    click.echo(summaries.format_summary(rows))
    if diff:
        pair = split_list(diff)
        if len(pair) != 2:
            raise UsageError(f"--diff {diff!r}: expected two methods, A,B")
        for variant in ("masked_in", "masked_out", "inpainted"):
            d, (lo, hi) = summaries.paired_difference(run_dir, pair[0], pair[1], variant, source_model=source_model, eval_models=split_list(eval_models) or None)
            click.echo(f"{variant:<11} top-1 {pair[0]} - {pair[1]}: {d:+.1f} points [{lo:+.1f}, {hi:+.1f}] (paired bootstrap 95% CI)")


__all__ = ["train"]
