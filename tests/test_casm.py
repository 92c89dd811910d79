"""CASM training: thinning pools, the gated area term, a short training run, checkpoints, ResNet-50."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch

from salbench import casm as C
from salbench import zoo
from salbench.errors import UsageError
from testutils import tiny_resnet_recipe

TINY = tiny_resnet_recipe("tiny-casm", seed=5)
TINY_DATA = TINY.data
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SALBENCH_HOME", str(tmp_path))
    zoo.register_recipe(TINY)
    return tmp_path


def tiny_spec(**kw) -> C.CasmSpec:
    base = dict(
        name="tiny", classifier="zoo:tiny-casm", init="scratch", dataset="synthetic?seed=5&classes=4&size=32",
        train_images=64, batch_size=8, steps=4, val_images=16, decoder_channels=4, checkpoint_every=2, thinning="L",
    )
    return C.CasmSpec(**{**base, **kw})


# ----------------------------------------------------------------------------------------------
# Thinning


def _run_pool(name: str, versions: int, seed: int = 0, max_size: int = 30) -> C.ClassifierPool:
    pool = C.ClassifierPool(C.parse_thinning(name, max_size=max_size), seed=seed)
    pool.observe(0, None)
    if pool.thinning.train_classifier:
        for v in range(1, versions + 1):
            pool.observe(v, None)
    return pool


def test_thinning_pools_keep_the_right_members():
    assert _run_pool("F", 250).members() == [0]  # the classifier never changes
    assert _run_pool("L", 250).members() == [250]
    assert _run_pool("FL", 250).members() == [0, 250]
    assert _run_pool("L100", 250).members() == [0, 100, 200, 250]
    assert [v for v, _ in _run_pool("L100", 250).snapshots] == [0, 100, 200]
    assert _run_pool("L1000", 2500).members() == [0, 1000, 2000, 2500]
    assert _run_pool("L1000", 999).members() == [0, 999]
    assert not C.parse_thinning("F").train_classifier and C.parse_thinning("L100").train_classifier


def test_periodic_pool_is_capped_with_seeded_random_eviction():
    pool = _run_pool("L100", 5000, seed=3)
    versions = [v for v, _ in pool.snapshots]
    assert len(versions) == 30  # at most 30 snapshots (plus the live current classifier)
    assert 5000 in versions  # the newest snapshot always enters (it replaces a random one)
    assert pool.members() == sorted(versions)  # the current classifier (5000) is also the newest snapshot
    pool.observe(5001, None)
    assert len(pool.members()) == 31 and pool.members()[-1] == 5001
    assert all(v % 100 == 0 for v in versions) and len(set(versions)) == 30
    assert versions == [v for v, _ in _run_pool("L100", 5000, seed=3).snapshots]  # seeded
    assert versions != [v for v, _ in _run_pool("L100", 5000, seed=4).snapshots]
    small = _run_pool("L10", 60, max_size=3)
    assert len(small.snapshots) == 3 and 60 in [v for v, _ in small.snapshots]


def test_pool_sampling():
    assert all(_run_pool("L", 10).sample(s) is None for s in range(50))
    assert all(_run_pool("F", 10).sample(s) is None for s in range(50))
    fl = _run_pool("FL", 10)
    draws = [fl.sample(s) for s in range(400)]
    share_current = sum(d is None for d in draws) / len(draws)
    assert 0.4 < share_current < 0.6 and set(draws) == {None, 0}
    assert draws == [fl.sample(s) for s in range(400)]


def test_unknown_thinning_and_score():
    with pytest.raises(UsageError, match="thinning"):
        C.parse_thinning("X7")
    with pytest.raises(UsageError, match="score"):
        C.CasmSpec(score="accuracy")


# ----------------------------------------------------------------------------------------------
# The objective


def test_area_term_applies_only_where_the_prediction_changed():
    clean = torch.tensor([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    masked = torch.tensor([[0.0, 4.0, 0.0], [3.0, 1.0, 0.0]])  # image 0 flipped, image 1 did not
    mask = torch.full((2, 1, 4, 4), 0.3, requires_grad=True)
    loss, terms = C.masker_objective(clean, masked, mask, score="entropy", lambda_r=2.0)
    assert terms["changed"].tolist() == [True, False]
    assert torch.allclose(terms["area_term"], torch.tensor([0.6, 0.0]))
    (g,) = torch.autograd.grad(loss, mask)
    assert torch.allclose(g[0], torch.full_like(g[0], 2.0 / 16 / 2))  # lambda / pixels / batch
    assert torch.count_nonzero(g[1]) == 0
    ent = C.prediction_entropy(masked)
    assert torch.allclose(loss, (0.6 - ent.sum()) / 2)
    # the classification score: the cross-entropy of the label replaces the entropy
    y = torch.tensor([0, 0])
    loss_c, terms_c = C.masker_objective(clean, masked, mask, score="classification", lambda_r=2.0, targets=y)
    assert torch.allclose(terms_c["score"], torch.nn.functional.cross_entropy(masked, y, reduction="none"))


# ----------------------------------------------------------------------------------------------
# Training


def _batch(n=8, size=32, seed=0):
    from salbench.datasets.synthetic import render

    imgs, labels = [], []
    for i in range(n):
        img, label, _, _ = render(TINY_DATA, "train", seed * 100 + i)
        imgs.append(torch.from_numpy(img).permute(2, 0, 1))
        labels.append(label)
    return torch.stack(imgs), torch.tensor(labels)


def _objective(trainer: C.CasmTrainer, x, y) -> float:
    trainer.masker.eval()
    trainer.f.eval()
    with torch.no_grad():
        m = trainer.masker(x)[:, None]
        xn = trainer.masker.normalize(x)
        lc = trainer.f(xn)
        lm = trainer.f(trainer.masker.normalize(C.apply_mask(x, m, trainer.fill)))
        loss, _ = C.masker_objective(lc, lm, m, score="entropy", lambda_r=trainer.lam)
    return loss.item()


def test_short_training_lowers_the_masker_loss(home):
    """Thinning F keeps the classifier fixed, so the masker's objective is stationary: a few steps
    on a batch must lower it (measured in eval mode before and after; the logged train-mode loss
    jumps when the gated area term switches on, so it is not compared)."""
    init = C.build_classifier("zoo:tiny-casm", "scratch")
    spec = tiny_spec(thinning="F", steps=8, lr_masker=1e-2, lambda_r=0.5)
    trainer = C.CasmTrainer.from_init(spec, init, fill=(0.5, 0.5, 0.5))
    f_before = {k: v.clone() for k, v in trainer.f.state_dict().items()}
    x, y = _batch(8)
    before = _objective(trainer, x, y)
    losses = [trainer.step(x, y)["loss_masker"] for _ in range(spec.steps)]
    assert all(np.isfinite(losses))
    assert _objective(trainer, x, y) < before - 1e-3
    assert trainer.version == 0 and all(torch.equal(v, trainer.f.state_dict()[k]) for k, v in f_before.items())


def test_separate_encoder_is_trained_by_the_masker_and_f_by_eq8(home):
    init = C.build_classifier("zoo:tiny-casm", "scratch")
    trainer = C.CasmTrainer.from_init(tiny_spec(thinning="L", share_encoder=False), init, fill=(0.5, 0.5, 0.5))
    assert trainer.masker.encoder is not trainer.f
    enc0 = {k: v.clone() for k, v in trainer.masker.encoder.state_dict().items()}
    f0 = {k: v.clone() for k, v in trainer.f.state_dict().items()}
    x, y = _batch(8)
    stats = [trainer.step(x, y) for _ in range(3)]
    assert all(np.isfinite(s["loss_classifier"]) for s in stats) and trainer.version == 3
    changed = lambda before, model: any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items() if v.is_floating_point())  # noqa: E731
    assert changed(enc0, trainer.masker.encoder) and changed(f0, trainer.f)
    shared = C.CasmTrainer.from_init(tiny_spec(thinning="L"), C.build_classifier("zoo:tiny-casm", "scratch"), fill=(0.5, 0.5, 0.5))
    assert shared.masker.encoder is shared.f  # shared: the masker's encoder is f's trunk


def test_train_caches_resumes_and_reloads_identical_maps(home):
    spec = tiny_spec()
    d = C.train(spec.replace(name="interrupted"), progress=False, stop_after=2)
    assert not C.is_complete(d) and (home / "casm" / ".work").is_dir()
    d_resumed = C.train(spec.replace(name="interrupted"), progress=False)
    meta = C.read_meta(d_resumed)
    assert meta["resumed_from_step"] == 2 and meta["key"] == spec.key()
    d_straight = C.train(spec, progress=False)
    assert d_straight.name == f"tiny-{spec.key()}" and d_straight.parent == home / "casm"
    log = [json.loads(line) for line in (d_straight / "log.jsonl").read_text().splitlines()]
    assert log and {"loss_masker", "area", "masked_acc", "step"} <= set(log[-1])
    a, _ = C.load_masker(d_resumed)
    b, meta_b = C.load_masker(d_straight)
    x, _ = _batch(4)
    with torch.no_grad():
        ma, mb = a(x), b(x)
    assert ma.shape == (4, 32, 32) and ma.min() >= 0 and ma.max() <= 1
    assert torch.equal(ma, mb), "a resumed run must end where an uninterrupted one does"
    assert C.train(spec, progress=False) == d_straight  # cached: no retraining
    assert meta_b["spec"]["thinning"] == "L" and meta_b["input_size"] == [3, 32, 32]


def test_exported_masker_reloads_to_identical_maps(home, tmp_path):
    init = C.build_classifier("zoo:tiny-casm", "scratch")
    trainer = C.CasmTrainer.from_init(tiny_spec(share_encoder=False), init, fill=(0.4, 0.5, 0.6))
    x, y = _batch(8)
    for _ in range(2):
        trainer.step(x, y)
    d = C.write_masker(tmp_path / "export", trainer.masker, {"name": "export", **trainer.masker_meta()})
    loaded, meta = C.load_masker(d)
    trainer.masker.eval()
    with torch.no_grad():
        trained_cl = trainer.masker(x)  # trained in channels_last (CPU speed): same maps up to float rounding
        assert torch.allclose(trained_cl, loaded(x), atol=1e-5)
        trainer.masker.to(memory_format=torch.contiguous_format)  # the layout load_masker gives
        assert torch.equal(trainer.masker(x), loaded(x))
    assert meta["fill"] == pytest.approx([0.4, 0.5, 0.6])


def test_resnet50_masker_builds_and_steps():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet50", pretrained=False, num_classes=10)
    spec = C.CasmSpec(name="r50", classifier="resnet50", thinning="FL", decoder_channels=8, batch_size=2, train_images=2)
    trainer = C.CasmTrainer(spec, model, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=(3, 64, 64), fill=(0.485, 0.456, 0.406))
    assert [p[0].in_channels for p in trainer.masker.proj] == [64, 256, 512, 1024, 2048]
    stats = trainer.step(torch.rand(2, 3, 64, 64), torch.tensor([1, 2]))
    assert np.isfinite(stats["loss_masker"]) and np.isfinite(stats["loss_classifier"])
    trainer.masker.eval()
    with torch.no_grad():
        m = trainer.masker(torch.rand(1, 3, 48, 48))
    assert m.shape == (1, 48, 48)
    assert len(trainer.pool.members()) == 2  # FL: f^(0) and f^(1)


@pytest.mark.parametrize("arch", ["efficientnet", "convnext", "vit"])
def test_masker_works_on_other_zoo_architectures(arch):
    model = zoo.create_model(arch)
    masker = C.Masker(model, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 64, 64), decoder_channels=4).eval()
    with torch.no_grad():
        m = masker(torch.rand(2, 3, 64, 64))
    assert m.shape == (2, 64, 64) and 0 <= m.min() and m.max() <= 1


def test_spec_key_covers_training_fields():
    s = C.CasmSpec()
    assert s.key() == C.CasmSpec(name="other").key()  # the name labels, the key identifies
    keys = {s.replace(**kw).key() for kw in ({"thinning": "F"}, {"score": "classification"}, {"share_encoder": False},
                                              {"lambda_r": 7.0}, {"steps": 5}, {"train_classes": (0, 1)}, {"seed": 1})}
    assert len(keys) == 7 and s.key() not in keys
    assert s.replace(lambda_r=s.lam).key() == s.key()  # None means the default lambda


# ----------------------------------------------------------------------------------------------
# Untrusted files in the cache: loaded as data, never as code


class _Payload:
    """Pickles to a call that writes ``marker``: what a planted file would run on an unsafe load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "payload ran"))


def test_planted_resume_checkpoint_is_refused_and_never_executed(home):
    """A pickle payload planted as ``.work/<name>-<key>/state.pt``: training refuses the file with a
    clear error (it does not silently start over) and the payload never runs."""
    from salbench.casm.checkpoints import CheckpointError, work_dir

    spec = tiny_spec(name="planted")
    state = work_dir(spec) / "state.pt"
    state.parent.mkdir(parents=True)
    marker = home / "marker"
    torch.save({"key": spec.key(), "trainer": _Payload(marker), "train_time_s": 0.0}, state)
    torch.load(state, weights_only=False)  # the payload is live: an unrestricted load runs it
    assert marker.read_text() == "payload ran"
    marker.unlink()
    with pytest.raises(CheckpointError, match=r"refusing to resume.*not a salbench training state"):
        C.train(spec, progress=False)
    assert not marker.exists()
    assert not C.is_trained(spec) and state.is_file()  # nothing trained, the file left for the user to inspect
    # a well-formed state of another shape (or another masker's key) is refused too
    torch.save({"key": "0" * 12, "trainer": {}, "train_time_s": 0.0}, state)
    with pytest.raises(CheckpointError, match="belongs to masker key"):
        C.train(spec, progress=False)
    torch.save({"key": spec.key(), "trainer": {"step": 1}, "train_time_s": 0.0}, state)
    with pytest.raises(CheckpointError, match="does not fit"):
        C.train(spec, progress=False)
    assert C.train(spec, progress=False, force=True) == C.masker_dir(spec)  # --force starts from step 0


def test_masker_meta_is_checked_before_it_builds_a_model(home, tmp_path):
    """meta.json is data: a field of the wrong type, or timm arguments that load files (a
    ``checkpoint_path`` to a pickle payload), are refused before any model is built."""
    init = C.build_classifier("zoo:tiny-casm", "scratch")
    trainer = C.CasmTrainer.from_init(tiny_spec(), init, fill=(0.5, 0.5, 0.5))
    d = C.write_masker(tmp_path / "export", trainer.masker, {"name": "export", **trainer.masker_meta()})
    meta = json.loads((d / "meta.json").read_text())
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": _Payload(marker)}, evil)
    (d / "meta.json").write_text(json.dumps({**meta, "model_kwargs": {**meta["model_kwargs"], "checkpoint_path": str(evil)}}))
    with pytest.raises(UsageError, match="checkpoint_path"):
        C.load_masker(d)
    assert not marker.exists()
    (d / "meta.json").write_text(json.dumps({**meta, "input_size": "3x32x32"}))
    with pytest.raises(C.CheckpointError, match="input_size"):
        C.load_masker(d)
    (d / "meta.json").write_text("[not, json")
    with pytest.raises(C.CheckpointError, match="unreadable"):
        C.read_meta(d)
    (d / "meta.json").write_text(json.dumps(meta))
    masker, _ = C.load_masker(d)
    assert masker.input_size == (32, 32)
