"""Train a masker end to end: data, the trainer loop, resumable checkpoints, the cached result.

``train(spec)`` returns the masker's cache directory, training it first unless it is cached. An
interrupted run resumes from its last checkpoint (``.work/<name>-<key>/state.pt``, every
``checkpoint_every`` steps) and ends exactly where an uninterrupted one does: batch order, pool
sampling and eviction depend only on (seed, step). The finished directory is filled under a
temporary name and renamed into place, under the store's lock for that masker.

Cost of the embedded pair (``CasmSpec()``): f starts from ``zoo:resnet``, 300 steps of 32 images.
Measured on the shared 2-core CPU this was developed on (1 training thread, see
``default_threads``; channels-last layout, which made ResNet max-pooling ~8x faster on this CPU):
83 s for ``casm`` (L100) and 76 s for ``casm-baseline`` (F) with the rendered training set cached,
~3 min for the pair end to end; under heavy load from other jobs the same steps took 2-4x longer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from salbench import store
from salbench.casm.checkpoints import (
    LOG_FILE,
    STATE_FILE,
    CheckpointError,
    is_complete,
    load_training_state,
    masker_dir,
    read_log,
    save_training_state,
    training_lock,
    work_dir,
    write_log,
    write_masker,
)
from salbench.casm.classifier import build_classifier
from salbench.casm.data import to_pixels, training_data
from salbench.casm.model import apply_mask
from salbench.casm.spec import CASM_FORMAT, CasmSpec, classifier_key, method_name
from salbench.casm.trainer import CasmTrainer
from salbench.errors import UsageError

EMA_KEYS = ("loss_masker", "loss_classifier", "area", "masked_acc", "changed")


def default_threads() -> int:
    """CPU threads for training: ``$SALBENCH_TRAIN_THREADS``, else half the cores (at least 1).

    Measured on the shared 2-core CPU this was developed on: with other jobs running, a CASM step
    took ~0.4-2 s on 1 thread but ~9.5 s on 2 (OpenMP threads spinning against other processes);
    leaving a core free is the robust choice there, and costs less than 2x on an idle machine.
    """
    env = os.environ.get("SALBENCH_TRAIN_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise UsageError(f"SALBENCH_TRAIN_THREADS={env!r}: expected a positive integer") from None
    return max(1, (os.cpu_count() or 1) // 2)


def train(spec: CasmSpec, *, force: bool = False, progress: bool = True, device: str | torch.device = "cpu", stop_after: int | None = None,
          threads: int | None = None, workers: int = 0) -> pathlib.Path:
    """Train (or resume) the masker of ``spec`` and cache it; return its directory.

    A cached masker is returned as is unless ``force``. ``stop_after`` stops after that many total
    steps without finishing (testing resumption). On the CPU, training uses ``threads`` threads
    (default ``default_threads()``); the previous count is restored. A resume checkpoint that is
    not a salbench training state is refused (``CheckpointError``), never loaded as code.
    """
    if is_complete(masker_dir(spec)) and not force:
        return masker_dir(spec)
    before = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(threads or default_threads())
    try:
        with torch.enable_grad():  # callers may hold no_grad (the runner does while it computes maps)
            return _train(spec, force=force, progress=progress, device=device, stop_after=stop_after, workers=workers)
    finally:
        torch.set_num_threads(before)


def _resume(trainer: CasmTrainer, spec: CasmSpec, work: pathlib.Path) -> tuple[int, float, list[dict[str, Any]]]:
    """Load ``work``'s checkpoint into ``trainer``: (resumed step, train seconds so far, log rows)."""
    state_path = work / STATE_FILE
    if not state_path.is_file():
        return 0, 0.0, []
    state = load_training_state(state_path, spec.key())
    try:
        trainer.load_state(state["trainer"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{state_path}: refusing to resume: the state does not fit masker {spec.name!r} ({first}); "
                              "delete it (or train with --force) to start from step 0") from None
    return trainer.step_no, float(state["train_time_s"]), read_log(work / LOG_FILE, before_step=trainer.step_no)


def _log_row(stats: dict[str, float], lr: float, time_s: float) -> dict[str, Any]:
    row = {k: (round(v, 5) if isinstance(v, float) and math.isfinite(v) else (None if isinstance(v, float) else v)) for k, v in stats.items()}
    return row | {"lr_masker": lr, "time_s": round(time_s, 2)}


def _train(spec: CasmSpec, *, force: bool, progress: bool, device: str | torch.device, stop_after: int | None, workers: int = 0) -> pathlib.Path:
    final = masker_dir(spec)
    with training_lock(spec):
        if is_complete(final) and not force:
            return final
        t_start = time.perf_counter()
        init = build_classifier(spec.classifier, spec.init, seed=spec.seed)
        data = training_data(spec, init, progress=progress)
        data_time = time.perf_counter() - t_start
        trainer = CasmTrainer.from_init(spec, init, data.fill, device=device)
        work = work_dir(spec)
        state_path, log_path = work / STATE_FILE, work / LOG_FILE
        if force and work.exists():
            shutil.rmtree(work, ignore_errors=True)
        resumed_from, prev_train_time, log = _resume(trainer, spec, work)
        work.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=spec.steps, initial=trainer.step_no, desc=f"casm:{spec.name}", disable=not progress, unit="step", dynamic_ncols=True)
        t0 = time.perf_counter()
        ema: dict[str, float] = {}
        last = trainer.step_no
        end = spec.steps if stop_after is None else min(spec.steps, stop_after)
        try:
            for x, y in data.batches(trainer.step_no, end, spec.batch_size, spec.seed, workers=workers):
                stats = trainer.step(x, y)
                if not math.isfinite(stats["loss_masker"]):
                    raise RuntimeError(f"casm:{spec.name}: masker loss diverged at step {trainer.step_no}")
                for k in EMA_KEYS:
                    v = stats[k]
                    if math.isfinite(v):
                        ema[k] = v if k not in ema else 0.9 * ema[k] + 0.1 * v
                bar.update(1)
                s = trainer.step_no
                if s % 10 == 0 or s == spec.steps:
                    log.append(_log_row(stats, trainer.opt_m.param_groups[0]["lr"], prev_train_time + time.perf_counter() - t0))
                    bar.set_postfix(loss=f"{ema.get('loss_masker', 0):.3f}", area=f"{ema.get('area', 0):.3f}", macc=f"{ema.get('masked_acc', 0):.2f}", refresh=False)
                if s % spec.checkpoint_every == 0 and s < spec.steps:
                    write_log(log_path, log)
                    save_training_state(state_path, spec.key(), trainer.state(), prev_train_time + time.perf_counter() - t0)
                    last = s
        finally:
            bar.close()
        train_time = prev_train_time + time.perf_counter() - t0
        if trainer.step_no < spec.steps:  # stopped early on purpose: leave a resumable checkpoint
            if trainer.step_no != last:
                write_log(log_path, log)
                save_training_state(state_path, spec.key(), trainer.state(), train_time)
            return final
        held_out = data.validation()
        val = _val_stats(trainer, *held_out) if held_out is not None else dict.fromkeys(("val_area", "val_area_std", "val_clean_top1", "val_masked_top1"))
        meta = {
            "name": spec.name,
            "method": method_name(spec.name),
            "key": spec.key(),
            "casm_format": CASM_FORMAT,
            "spec": spec.to_dict(),
            "lambda_r_effective": spec.lam,
            "thinning": dataclasses.asdict(trainer.thinning),
            "classifier": spec.classifier,
            "classifier_key": classifier_key(spec.classifier),
            **trainer.masker_meta(),
            "pool_versions": trainer.pool.members(),
            "classifier_updates": trainer.version,
            "train_images_used": data.n,
            "data": data.meta,
            "train_time_s": round(train_time, 2),
            "data_time_s": round(data_time, 2),
            "resumed_from_step": resumed_from,
            "torch_threads": torch.get_num_threads(),
            "final": {k: ema.get(k) for k in EMA_KEYS},
            **val,
            "versions": store.versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with store.atomic_directory(final) as tmp:
            write_masker(tmp, trainer.masker, meta)
            (tmp / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in log))
        shutil.rmtree(work, ignore_errors=True)
    return final


@torch.no_grad()
def _val_stats(trainer: CasmTrainer, images: np.ndarray, labels: np.ndarray, batch_size: int = 250) -> dict[str, float]:
    """Mean mask area and the final classifier's clean / masked-out top-1 on validation images."""
    trainer.masker.eval()
    trainer.f.eval()
    areas, clean, masked = [], [], []
    for i in range(0, len(images), batch_size):
        x = to_pixels(images[i : i + batch_size]).to(trainer.device)
        y = torch.from_numpy(labels[i : i + batch_size]).to(trainer.device)
        m = trainer.masker(x)[:, None]
        areas.append(m.flatten(1).mean(1))
        clean.append(trainer.f(trainer.masker.normalize(x)).argmax(1) == y)
        masked.append(trainer.f(trainer.masker.normalize(apply_mask(x, m, trainer.fill))).argmax(1) == y)
    a = torch.cat(areas)
    return {
        "val_area": round(a.mean().item(), 4),
        "val_area_std": round(a.std(unbiased=False).item(), 4),
        "val_clean_top1": round(torch.cat(clean).float().mean().item(), 4),
        "val_masked_top1": round(torch.cat(masked).float().mean().item(), 4),
    }


__all__ = ["default_threads", "train"]
