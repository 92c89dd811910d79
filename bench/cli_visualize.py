"""``salbench visualize ...``: pictures of what a classifier has learnt (attached by salbench.cli).

    salbench visualize class-model --model zoo:resnet --classes 0,3,7 [--steps N --lr X --l2 X --out grid.png]

Heavy imports (torch, timm) happen in the command bodies, as in the other CLI modules.
"""

from __future__ import annotations

import click


@click.group()
def visualize() -> None:
    """Visualisations of trained classifiers."""


@visualize.command("class-model")
@click.option("--model", "model_spec", required=True, help="Classifier spec: zoo:resnet, resnet50.a1_in1k, NAME@weights.pth.")
@click.option("--classes", required=True, help="Comma-separated class indices, e.g. 0,3,7.")
@click.option("--steps", type=click.IntRange(min=1), default=100, show_default=True, help="Gradient-ascent steps.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True, help="Adam step size (normalised input units).")
@click.option("--l2", type=click.FloatRange(min=0), default=1e-3, show_default=True, help="L2 weight lambda in S_c(I) - lambda ||I||^2.")
@click.option("--out", type=click.Path(dir_okay=False), default="class_models.png", show_default=True,
              help="PNG grid to write (into a run directory as class_models.png, the report shows it).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
def class_model(model_spec, classes, steps, lr, l2, out, device) -> None:
    """Simonyan et al. 2013 class models: per class, the image maximising its unnormalised score minus an L2 penalty, from a zero image."""
    from salbench.class_model import class_names, optimise, parse_classes, write_grid
    from salbench.classifiers import ModelOptions, load_classifier
    from salbench.device import resolve_device

    parse_classes(classes)  # malformed lists fail before the model loads
    clf = load_classifier(model_spec, ModelOptions(device=resolve_device(device)))
    wanted = parse_classes(classes, clf.num_classes)
    result = optimise(clf, wanted, steps=steps, lr=lr, l2=l2)
    names = class_names(model_spec, clf.num_classes)
    path = write_grid(result, names, f"{model_spec}: class models ({steps} steps, lr {lr:g}, L2 {l2:g})", out)
    for i, c in enumerate(wanted):
        top = int(result.top1[i])
        click.echo(f"class {c}{f' ({names[c]})' if names else ''}: S_c {result.scores[0, i]:.2f} -> {result.scores[-1, i]:.2f}, top-1 {top}{'' if top == c else ' (not the class)'}")
    click.echo(f"written: {path}")
