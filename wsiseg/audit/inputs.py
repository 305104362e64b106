"""Inputs of ``wsiseg audit``: model, mechanism, target tiles, baselines and the protections to attack.

The model and mechanism come from a run folder's card (or a fresh tiny model), the target tiles and their
baselines from a tiles folder (or a generated cohort).

Every check happens here, before anything is written: a run folder without a checkpoint, tiles whose size
differs from the model's, and a mechanism the attack does not model are refused with one clear line.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsiseg.audit.invert import LocalRecipe
from wsiseg.audit.release import Condition
from wsiseg.data.dataset import load_tile, to_tensor
from wsiseg.errors import CheckpointError, DataError, PrivacyError
from wsiseg.tiling.manifest import Manifest, load_manifest

__all__ = ["AuditModel", "Targets", "conditions_for", "generated_tiles", "load_audit_model", "pick_targets"]

#: Client-level DP modes and DP-SGD that the attack models; anything else is refused.
MODELLED_MODES = ("none", "central", "local", "sample")


@dataclass
class AuditModel:
    """The attacked model and what the card says about its training.

    Attributes:
        model: The global model (weights of the checkpoint, or a fresh initialisation).
        num_classes: Classes of its output.
        tile_size: Tile side it was trained on (None: any).
        recipe: The site's local training (learning rate, momentum, weight decay, local steps).
        batch: The run's batch size.
        dp: The run's DP mode (``none`` for a fresh model).
        clip: The run's clip norm.
        sigma: The run's noise multiplier (None: not set or calibrated).
        rounds: The run's planned rounds.
        epsilon: The run's accounted epsilon (None without DP).
        source: Where it came from, for the report.
    """

    model: nn.Module
    num_classes: int
    tile_size: int | None
    recipe: LocalRecipe
    batch: int
    dp: str
    clip: float
    sigma: float | None
    rounds: int
    epsilon: float | None
    source: str


def load_audit_model(run_dir: Path | None, *, model_name: str, tile_size: int, seed: int) -> AuditModel:
    """The run's final checkpoint and card, or a fresh ``model_name`` (GroupNorm) when ``run_dir`` is None.

    A fresh DHUnet is built without stochastic depth, so the site's local training is deterministic and the
    attacker can simulate it exactly (the worst case for the site).

    Raises:
        CheckpointError: The run folder has no checkpoint.
        PrivacyError: The run's mechanism is one the attack does not model.
    """
    from wsiseg.models import create_model
    from wsiseg.train.checkpoint import load_checkpoint

    if run_dir is None:
        torch.manual_seed(seed)
        kw: dict[str, Any] = {"img_size": tile_size} if model_name.startswith(("dhunet", "swin", "transfuse")) else {}
        if model_name.startswith("dhunet"):  # no stochastic depth: the attacker's simulation is exact (worst case)
            kw.update(drop_path_global=0.0, drop_path_local=0.0)
        model = create_model(model_name, num_classes=4, norm="groupnorm", pretrained=False, **kw)
        return AuditModel(model, 4, tile_size, LocalRecipe(), 8, "none", 1.0, None, 150, None,
                          f"fresh {model_name} (round 1 of a federation: the server's first model)")  # fmt: skip
    ckpt = run_dir / "checkpoints" / "final"
    if not ckpt.with_suffix(".json").is_file():
        ckpt = run_dir / "checkpoints" / "last"
    if not ckpt.with_suffix(".json").is_file():
        msg = f"{run_dir}: no checkpoints/final.json or last.json; pass a finished train or fed-train run folder"
        raise CheckpointError(msg)
    loaded = load_checkpoint(ckpt)
    card = loaded.card
    fed = card.get("fed_config") or card.get("train_config") or {}
    priv = card.get("privacy") or {}
    dp = str(fed.get("dp") or priv.get("dp") or "none")
    if dp not in MODELLED_MODES or fed.get("clip_scope", "model") != "model":
        msg = (f"{run_dir}: mechanism dp={dp!r} clip_scope={fed.get('clip_scope', 'model')!r} is not modelled by "
               f"the attack (it models dp {', '.join(MODELLED_MODES)} with whole-model clipping)")  # fmt: skip
        raise PrivacyError(msg)
    model = loaded.build_model()
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        msg = (f"{run_dir}: the model has BatchNorm running statistics, which the attack does not model (and DP "
               "training refuses); audit a run trained with --norm groupnorm")  # fmt: skip
        raise PrivacyError(msg)
    tiling = card.get("tiling") or {}
    steps = fed.get("local_steps") or 1
    recipe = LocalRecipe(lr=float(fed.get("lr", 0.01)), momentum=float(fed.get("momentum", 0.9)),
                         weight_decay=float(fed.get("weight_decay", 1e-4)), steps=int(steps))  # fmt: skip
    sigma = priv.get("noise_multiplier", fed.get("sigma"))
    return AuditModel(model, len(card.get("classes") or []) or 4, tiling.get("size"), recipe,
                      int(fed.get("batch_size", 8)), dp, float(fed.get("clip", 1.0)),
                      None if sigma is None else float(sigma), int(fed.get("rounds", 1)), priv.get("epsilon"),
                      str(ckpt))  # fmt: skip


def generated_tiles(work: Path, size: int, seed: int) -> Path:
    """Generate two small synthetic slides and tile them at ``size`` px from 256 px windows (the default)."""
    from wsiseg.testing.synthetic import make_cohort
    from wsiseg.tiling import TilingConfig
    from wsiseg.tiling.batch import expand_sources, tile_many

    cohort, tiles = work / "cohort", work / "tiles"
    make_cohort(cohort, n_slides=2, width=1536, height=1024, seed=seed)
    tile_many(expand_sources([cohort]), tiles, TilingConfig(window=256, stride=256, size=size), workers=1)
    return tiles


@dataclass
class Targets:
    """Target tiles and the baselines an attacker has without any update, all at the tile size."""

    images: torch.Tensor  # ImageNet-normalised (B, 3, H, W)
    masks: torch.Tensor  # (B, H, W)
    mean_colour: torch.Tensor  # (B, 3, H, W) in [0, 1]: the site's mean colour, flat
    random_other: torch.Tensor  # (B, 3, H, W) in [0, 1]: random other tiles of the site
    names: list[str]


def pick_targets(tiles: Path, count: int, *, tile_size: int | None, num_classes: int, seed: int) -> Targets:
    """Choose ``count`` target tiles (seeded; tiles with the most classes first) and their baselines.

    Raises:
        DataError: No tiles with masks, fewer than ``count + 1`` tiles, a tile size other than the model's, or
            class ids the model does not have.
    """
    manifest: Manifest = load_manifest(tiles)
    if tile_size is not None and manifest.config.size != tile_size:
        msg = (f"{tiles}: tiles are {manifest.config.size} px but the model was trained on {tile_size} px; "
               f"re-tile with `wsiseg tile --size {tile_size}` or pass that run's tiles")  # fmt: skip
        raise DataError(msg)
    records = [r for r in manifest.records if r.mask]
    if len(records) < count + 1:
        msg = f"{tiles}: {len(records)} tile(s) with masks; the audit needs at least {count + 1}"
        raise DataError(msg)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(records))
    loaded = [load_tile(manifest.root, records[i]) for i in order]
    masks_np = [np.asarray(m, dtype=np.int64) for _, m in loaded]  # type: ignore[arg-type]
    if max(int(m.max()) for m in masks_np) >= num_classes:
        msg = f"{tiles}: masks have class ids >= {num_classes}, which the model does not predict"
        raise DataError(msg)
    variety = [len(np.unique(m)) for m in masks_np]
    chosen = sorted(range(len(loaded)), key=lambda i: -variety[i])[:count]  # stable: seeded order among ties
    rest = [i for i in range(len(loaded)) if i not in chosen]
    pixels = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im, _ in loaded])  # (N, H, W, 3)
    mean = pixels[rest].reshape(-1, 3).mean(0)
    others = rng.choice(rest, size=count, replace=len(rest) < count)
    images = torch.stack([to_tensor(loaded[i][0]) for i in chosen])
    masks = torch.stack([torch.from_numpy(masks_np[i]) for i in chosen])
    h, w = masks.shape[1:]
    flat = torch.from_numpy(np.broadcast_to(mean[:, None, None], (3, h, w)).copy()).expand(count, 3, h, w)
    random_other = torch.from_numpy(pixels[others].transpose(0, 3, 1, 2).copy())
    names = [records[order[i]].image for i in chosen]
    return Targets(images, masks, flat.contiguous(), random_other, names)


def _epsilon(sigma: float, q: float, steps: int, delta: float) -> float | None:
    from wsiseg.privacy.accounting import epsilon_for_history

    try:
        return float(epsilon_for_history([(sigma, q, steps)], delta=delta))
    except (ValueError, PrivacyError, OverflowError):  # the accountant refuses (e.g. far too little noise)
        return math.inf


def conditions_for(am: AuditModel, *, sigmas: tuple[float, ...], dpsgd_epsilon: float, dpsgd_rate: float,
                   dpsgd_steps: int, delta: float = 1e-5) -> list[Condition]:  # fmt: skip
    """The protections to attack: raw, clipped, clip + client noise at each sigma, DP-SGD at ``dpsgd_epsilon``.

    Client-level epsilons are over the run's rounds with every site in every round (the paper's plan when
    there is no run); the DP-SGD epsilon is over ``dpsgd_steps`` steps at Poisson rate ``dpsgd_rate``, or the
    run's own when it is a sample-mode run.
    """
    from wsiseg.privacy.calibrate import calibrate_noise_multiplier

    c = am.clip
    who = f"client-level, one site, {am.rounds} round(s), all sites every round"
    conds = [
        Condition("raw update", "raw", c),
        Condition(f"clipped to C={c:g} (central mode, as the server sees it)", "clipped", c),
    ]
    for s in sigmas:
        conds.append(Condition(f"clip + site noise sigma {s:g} (local DP)", "noise", c, s,
                               _epsilon(s, 1.0, am.rounds, delta), who))  # fmt: skip
    if am.dp == "local" and am.sigma is not None and am.sigma not in sigmas:
        conds.append(Condition(f"this run: clip + site noise sigma {am.sigma:.3g}", "noise", c, am.sigma,
                               am.epsilon, who))  # fmt: skip
    if am.dp == "sample" and am.sigma is not None:
        conds.append(Condition(f"this run: DP-SGD sigma {am.sigma:.3g}", "dp-sgd", c, am.sigma, am.epsilon,
                               "the run's ledger (one unit inside a site)"))  # fmt: skip
    else:
        z = calibrate_noise_multiplier(target_epsilon=dpsgd_epsilon, delta=delta, rounds=dpsgd_steps,
                                       sample_rate=dpsgd_rate)  # fmt: skip
        conds.append(Condition(f"DP-SGD at epsilon {dpsgd_epsilon:g} (sigma {z:.3g})", "dp-sgd", c, z,
                               _epsilon(z, dpsgd_rate, dpsgd_steps, delta),
                               f"one tile, {dpsgd_steps} steps at q={dpsgd_rate:g}"))  # fmt: skip
    return conds


def default_work() -> Path:
    """A scratch folder for the generated cohort."""
    return Path(tempfile.mkdtemp(prefix="wsiseg-audit-"))
