"""CASM: classifier-agnostic saliency map extraction (Zolna et al.), trained on this machine.

The package, bottom up (a module imports only those above it in this list):

    spec         ``CasmSpec`` (what determines a masker), its cache key, thinning rules
    pool         ``ClassifierPool``: the classifier pool F^(k) kept by a thinning rule
    model        ``Masker``: the classifier's feature stages + an upsample-and-concatenate decoder
    objective    ``masker_objective``: -S(m, f') with the gated area term
    classifier   ``build_classifier``: the classifier f training starts from
    data         training batches (synthetic set in memory, or an ImageNet training folder)
    trainer      ``CasmTrainer``: one step of Algorithm 1, and its resumable state
    checkpoints  the masker cache in ``$SALBENCH_HOME/casm`` (salbench.store): read safely
    train        ``train(spec)``: the resumable training loop that fills the cache
    summaries    per-method tables of a run with the report's bootstrap CIs (salbench.tables)
    experiments  Table 2 / Table 3 / twin experiments; the only module that runs the runner

This package re-exports the lower layers (spec .. train). ``summaries`` and ``experiments`` are
imported by name (``from salbench.casm import experiments``): the experiments import the runner,
which imports the methods, which import this package, so re-exporting them here would be a cycle.
``salbench.methods.casm`` registers the trained maskers as the methods ``casm``, ``casm-baseline``
and ``casm-<name>``.

Training (Algorithm 1), one step k on a batch (x, y): the current classifier f^(k-1) is updated on
clean and masked images (eq. 8) unless the thinning is ``F``; the pool F^(k) observes f^(k); f' is
sampled from the pool; the masker takes one step on ``-S(m, f')`` with
``S = mean_i [ H(f'((1-m_i)x_i + m_i*fill)) - lambda_R * changed_i * area(m_i) ]``
(``score="classification"``: the cross-entropy of the label instead of H), where ``changed_i`` says
whether the mask changed f''s prediction on image i. Removed pixels get the training set's mean
colour.

Adaptive lambda_R
    The area penalty is gated per image (it acts only once the mask has changed the prediction).
    While a mask leaves the prediction unchanged, only the score term acts and grows the mask; once
    it flips the prediction, the area term shrinks it. The equilibrium is the smallest mask that
    still removes the evidence, i.e. roughly the object. The scale lambda_R = 3 was then chosen so
    that the mean mask on the synthetic set is roughly the object's size (mean masks 0.30 for CASM
    and 0.20 for the baseline against a mean object box of 0.34 of the image; objects cover 5-50%).
    One value serves every thinning and score (the official code tunes it per thinning, 2.5 for F
    to 10 for L100 at 1000 classes; pass ``lambda_r`` for that); see ``DEFAULT_LAMBDA_R``.

Encoder sharing (``share_encoder``)
    Shared (the paper's best setting and the default): the masker's encoder *is* the current
    classifier f^(k)'s trunk (the same module). The decoder reads its stage features *detached*:
    the encoder is trained only by the classifier's loss (eq. 8), the decoder only by the masker's
    score, as in the official code. The sampled f' only *scores* masked images; the features always
    come from the current classifier. The saved masker holds the final f's trunk.
    Not shared: the masker owns a separate copy of the initial classifier as its encoder, trained
    with the decoder by the masker's score (at the classifier's learning rate).

Thinning (``Thinning`` / ``ClassifierPool``): the pool is the live current classifier plus CPU
    state-dict snapshots tagged with their *version* (number of classifier updates):
      F      the classifier is never updated: F^(k) = {f^(0)} (the classifier-dependent baseline);
      L      F^(k) = {f^(k)};
      FL     F^(k) = {f^(0), f^(k)}, each sampled with probability 1/2;
      L<N>   (L100, L1000, any N): a snapshot at versions 0, N, 2N, ...; at most ``pool_size`` (30)
             snapshots, a uniformly random one replaced when full; f' = the current classifier with
             probability ``p_current`` (1/2, the official ``--hp``), else a uniform snapshot.
    Randomness (batch order, pool sampling and eviction) is derived from (seed, step) alone, so a
    run resumed from a checkpoint continues exactly as an uninterrupted one.
"""

from salbench.casm.checkpoints import (
    CheckpointError,
    cached_maskers,
    casm_home,
    is_complete,
    is_trained,
    load_masker,
    masker_dir,
    read_meta,
    resolve_checkpoint,
    write_masker,
)
from salbench.casm.classifier import ClassifierInit, build_classifier
from salbench.casm.model import Masker, apply_mask, feature_stages
from salbench.casm.objective import masker_objective, prediction_entropy
from salbench.casm.pool import ClassifierPool
from salbench.casm.spec import (
    CASM_FORMAT,
    DEFAULT_LAMBDA_R,
    DEFAULT_NAMES,
    SCORES,
    THINNINGS,
    CasmSpec,
    Thinning,
    class_tuple,
    classifier_key,
    default_lambda,
    method_name,
    parse_thinning,
)
from salbench.casm.train import default_threads, train
from salbench.casm.trainer import CasmTrainer

__all__ = [
    "CASM_FORMAT",
    "CasmSpec",
    "CasmTrainer",
    "CheckpointError",
    "ClassifierInit",
    "ClassifierPool",
    "DEFAULT_LAMBDA_R",
    "DEFAULT_NAMES",
    "Masker",
    "SCORES",
    "THINNINGS",
    "Thinning",
    "apply_mask",
    "build_classifier",
    "cached_maskers",
    "casm_home",
    "class_tuple",
    "classifier_key",
    "default_lambda",
    "default_threads",
    "feature_stages",
    "is_complete",
    "is_trained",
    "load_masker",
    "masker_dir",
    "masker_objective",
    "method_name",
    "parse_thinning",
    "prediction_entropy",
    "read_meta",
    "resolve_checkpoint",
    "train",
    "write_masker",
]
