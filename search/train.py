"""Train a derived network from scratch (the DARTS evaluation recipe) into a run directory.

The recipe (DARTS's ``train.py``, which PC-DARTS, P-DARTS and sharpDARTS keep):
SGD with momentum 0.9 and weight decay 3e-4 on every parameter, gradient norm
clipped at 5, learning rate per epoch from :func:`search.schedules.lr_at`
(cosine from 0.025 to 0, or sharpDARTS's Cosine Power Annealing), loss
``CE(logits) + w_aux * CE(aux_logits)`` with the auxiliary head after cell
2L/3 (``w_aux = 0.4``), drop-path on every non-identity edge at rate
``p * epoch / epochs`` (``p = 0.2``), random crop + flip and Cutout (16 px at
32x32) on the training images. Evaluation uses BN running statistics and no
drop-path.

The network is the CIFAR eval network (stem 3x3 conv, L cells, reductions at
L/3 and 2L/3) at the data's resolution -- digits' 8x8 images run it at 8x8,
the grey channel repeated to the 3 the stem takes -- or the NB201 network of
an architecture string. For inputs other than 32x32 the auxiliary head's
5x5/3 average pool (which turns CIFAR's 8x8 into 2x2) becomes an adaptive
pool to the same 2x2, so its parameters and counts are unchanged.

Run directory: ``config.json``; ``log.jsonl`` (one line per epoch: loss,
train and held-out accuracy, lr, drop-path rate, seconds); ``checkpoint.pt``
after every epoch (written to a temporary file, then renamed; tensors only,
read back with ``weights_only=True``); ``result.json`` at the end (held-out
top-1 accuracy and the costs of the trained and of the deployed network on
each ``--table``). ``resume=True`` continues from the checkpoint; the result
is the uninterrupted run's, because every epoch's data order, augmentation
and RNG state are seeded from (seed, epoch), never from the history.

Data-parallel: under ``torchrun`` each process takes a contiguous shard of
every global batch and the gradients are averaged (search/distributed.py);
only rank 0 writes the run directory.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from spaces.errors import HwcostError

from . import distributed as D
from .augment import cutout, random_crop_flip
from .data import DataSpec, load_data
from .progress import Progress
from .schedules import SCHEDULES, lr_at

HOLDOUT = 0.2          # share of the training set held out when the data has no test split


@dataclass
class TrainConfig:
    """Everything a training run depends on; ``None`` means "the recipe's default for this space/data"."""
    space: str = "darts"
    genotype: str | None = None          # built-in name or file (darts, sharpdarts)
    arch: str | None = None              # NB201 architecture string
    from_search: str | None = None       # a search run directory (its result.json)
    data: str = "digits"
    C: int | None = None                 # None: the preset's (36 darts/sharpdarts, 16 nb201)
    layers: int | None = None            # cells (darts); cells per stage N (nb201); None: 20 / 5
    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    lr_min: float = 0.0
    schedule: str = "cosine"             # cosine | cpa (sharpDARTS eq. 2)
    power: float = 2.0                   # CPA's p
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    auxiliary: float | None = None       # aux loss weight; None: 0.4 (darts/sharpdarts), 0 (nb201: no head)
    drop_path: float | None = None       # final drop-path rate; None: 0.2 (darts/sharpdarts), 0 (nb201)
    cutout: int | None = None            # side in pixels; None: 16 * size / 32; 0 disables
    crop_pad: int | None = None          # None: 4 * size / 32 for cifar10/imagefolder, 0 otherwise
    flip: bool | None = None             # None: on for cifar10/imagefolder, off otherwise (digits)
    freeze_bn: bool = False              # BN uses running statistics while training too
    steps_per_epoch: int | None = None   # cap (tests, smoke runs)
    network: str | None = "cifar10"      # deployed preset whose costs are reported (None: skip)
    tables: list[str] = field(default_factory=list)
    seed: int = 0
    threads: int | None = None
    device: str = "auto"                 # auto | cpu | cuda

    def to_dict(self) -> dict:
        return asdict(self)


# --- inputs -------------------------------------------------------------------------------


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _read_search_result(run: str) -> dict:
    path = Path(run) / "result.json" if Path(run).is_dir() else Path(run)
    if not path.is_file():
        raise HwcostError(f"no search result at {path}; give a finished search run directory "
                          f"(hwcost search --out RUN) or its result.json")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HwcostError(f"cannot read search result {path}: {e}") from None
    if not isinstance(doc, dict) or "space" not in doc or not ("genotype" in doc or "arch" in doc):
        raise HwcostError(f"{path} is not a search result (needs 'space' and 'genotype' or 'arch')")
    doc["_path"] = str(path)
    return doc


def resolve_arch(cfg: TrainConfig) -> tuple[str, object, str]:
    """(space, Genotype | NB201 string, description) from --genotype / --arch / --from-search."""
    from spaces import Nb201Arch, get_space, load_genotype
    from spaces.genotypes import genotype_from_dict
    given = [n for n in ("genotype", "arch", "from_search") if getattr(cfg, n) is not None]
    if len(given) != 1:
        raise HwcostError("give one network: --genotype NAME|FILE (darts, sharpdarts), --space nb201 --arch STR, "
                          "or --from-search RUN" + (f" (got {', '.join('--' + g.replace('_', '-') for g in given)})"
                                                    if given else ""))
    space = cfg.space
    if cfg.from_search is not None:
        doc = _read_search_result(cfg.from_search)
        space = doc["space"]
        get_space(space)
        if space == "nb201":
            return space, Nb201Arch.parse(str(doc["arch"])).to_str(), f"search {cfg.from_search}"
        return space, genotype_from_dict(doc["genotype"], doc["_path"]).validate(space), f"search {cfg.from_search}"
    get_space(space)
    if space == "nb201":
        if cfg.arch is None:
            raise HwcostError("--space nb201 takes --arch '|op~0|+|op~0|op~1|+|op~0|op~1|op~2|', not --genotype")
        return space, Nb201Arch.parse(cfg.arch).to_str(), cfg.arch
    if cfg.arch is not None:
        raise HwcostError(f"--arch is for the nb201 space; space {space!r} takes --genotype")
    g_space, g = load_genotype(cfg.genotype, space)
    return g_space, g, cfg.genotype


def held_out_split(data: DataSpec, fraction: float = HOLDOUT, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train, held-out): the data's own test split, else a fixed random ``fraction`` of train.

    The split's seed is fixed (not the run's), so every seed is scored on the same images.
    """
    if data.test is not None:
        return data.train, data.test
    n = len(data.train)
    n_test = max(1, int(round(n * fraction)))
    if n - n_test < 2:
        raise HwcostError(f"data {data.name} has {n} samples: too few to hold out a test split")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(data.train, perm[n_test:]), Subset(data.train, perm[:n_test])


def fetch(ds: Dataset, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of ``ds`` at indices ``idx`` (tensor datasets are indexed directly)."""
    base, idx = ds, idx
    while isinstance(base, Subset):
        idx = torch.as_tensor(base.indices)[idx]
        base = base.dataset
    if isinstance(base, TensorDataset):
        return base.tensors[0][idx], base.tensors[1][idx]
    items = [base[int(i)] for i in idx]
    return torch.stack([torch.as_tensor(x) for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


def _check(cfg: TrainConfig) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise HwcostError(what)
    need(cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}")
    need(cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}")
    need(cfg.lr > 0 and cfg.lr_min >= 0 and cfg.lr_min <= cfg.lr,
         f"need 0 <= --lr-min <= --lr and --lr > 0, got lr={cfg.lr}, lr_min={cfg.lr_min}")
    need(cfg.schedule in SCHEDULES, f"unknown schedule {cfg.schedule!r}; known: {', '.join(SCHEDULES)}")
    need(cfg.power > 0, f"--power must be > 0, got {cfg.power}")
    need(cfg.grad_clip > 0, f"--grad-clip must be > 0, got {cfg.grad_clip}")
    need(cfg.auxiliary is None or cfg.auxiliary >= 0, f"--auxiliary must be >= 0, got {cfg.auxiliary}")
    need(cfg.drop_path is None or 0 <= cfg.drop_path < 1, f"--drop-path must be in [0, 1), got {cfg.drop_path}")
    need(cfg.cutout is None or cfg.cutout >= 0, f"--cutout must be >= 0 (0 disables), got {cfg.cutout}")
    need(cfg.crop_pad is None or cfg.crop_pad >= 0, f"--crop-pad must be >= 0, got {cfg.crop_pad}")
    need(cfg.C is None or cfg.C >= 1, f"--C must be >= 1, got {cfg.C}")
    need(cfg.layers is None or cfg.layers >= 1, f"--layers must be >= 1, got {cfg.layers}")
    need(cfg.steps_per_epoch is None or cfg.steps_per_epoch >= 1,
         f"--steps-per-epoch must be >= 1, got {cfg.steps_per_epoch}")
    need(cfg.device in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda, got {cfg.device!r}")


def _adapt_aux_head(model: nn.Module) -> None:
    """Keep the aux head's 2x2 pooled map for any input size (DARTS's 5x5/3 pool assumes 8x8)."""
    head = getattr(model, "auxiliary_head", None)
    if head is None:
        return
    s = model.config.input_size // 4          # two reductions before the head
    if s >= 5 and (s - 5) // 3 + 1 == 2:
        return
    for i, m in enumerate(head.features):
        if isinstance(m, nn.AvgPool2d):
            head.features[i] = nn.AdaptiveAvgPool2d(2)


# --- costs --------------------------------------------------------------------------------


def load_tables(names: list[str], space: str) -> list:
    """Load and check every --table before training (a bad table fails now, not after the run)."""
    from costmodels.predict import check_table_for
    from device_tables import bundled_table_path, load_table
    tables = []
    for name in names:
        table = load_table(bundled_table_path(name))
        if table.kind == "arch":
            if space != "nb201" or "nb201" not in table.spaces:
                raise HwcostError(f"table {name} is an architecture-level table of {', '.join(table.spaces)}; "
                                  f"it prices only --space nb201 architectures (give an op-level table)")
        else:
            check_table_for(table, space)
        tables.append((name, table))
    return tables


def latency_on(table, name: str, space: str, arch, net: nn.Module) -> dict:
    """Latency of the deployed network on one table: its measured entry (architecture-level
    table) or the sum of its ops (op-level table, costmodels.predict)."""
    info = {"device": table.device.get("name"), "backend": table.runtime.get("backend")}
    if table.kind == "arch":
        from device_tables import ArchKey
        entry = table.get(ArchKey("nb201", str(arch), "cifar10"))
        return {"latency_ms": None if entry is None else float(entry.median_ms),
                "source": "table (measured architecture)" if entry is not None else "not in the table", **info}
    from costmodels.predict import predict_network
    p = predict_network(net, net.input_shape(), table)
    return {"latency_ms": p.latency_ms, "source": "sum of table ops (costmodels.predict)",
            "from_table": p.from_table, "from_surrogate": p.from_surrogate, **info}


def deployed_costs(space: str, arch, network: str, tables: list) -> dict:
    """Params/MACs (costmodels.analytical) and latency per table of the deployed network preset."""
    from costmodels.analytical import network_costs
    from spaces import Nb201NetConfig, build_network, network_config
    if space == "nb201":
        net, name = build_network(Nb201NetConfig(arch=str(arch))), "nb201-cifar10"
    else:
        net, name = build_network(network_config(network, arch, space)), network
    c = network_costs(net, net.input_shape())
    return {"network": name, "input_shape": list(net.input_shape()), "params": c.params, "macs": c.macs,
            "macs_with_bn": c.macs_with_bn, "model_bytes": c.model_bytes,
            "latency": {n: latency_on(t, n, space, arch, net) for n, t in tables}}


# --- resuming a run directory (shared with search.run) -------------------------------------

# What a cut, corrupt or foreign checkpoint raises while it is read and loaded into a run.
_UNREADABLE = (RuntimeError, KeyError, EOFError, ValueError, OSError, pickle.UnpicklingError)


def restore_checkpoint(path: str | os.PathLike, apply, map_location=None) -> dict:
    """Read a run's ``checkpoint.pt`` (tensors only, ``weights_only=True``) and ``apply(state)`` it
    to the run; a checkpoint cut short, corrupt, or written by another configuration (missing
    entries, other shapes) is one :class:`HwcostError` naming the file. Call it before the run
    directory's logs are touched, so that a refused resume loses nothing. Returns the state."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
        apply(state)
    except _UNREADABLE as e:
        why = f"no entry {e}" if isinstance(e, KeyError) else (str(e).splitlines() or [type(e).__name__])[0]
        raise HwcostError(f"cannot resume from {path}: {why} (was it written by this configuration?)") from None
    return state


def check_same_settings(out: str | os.PathLike, section: str, now: dict, free=(), normalise=None) -> None:
    """Refuse to resume ``out`` with settings other than those its ``config.json[section]`` holds
    (one line naming each differing field); fields in ``free`` may change; ``normalise(field,
    value)``, if given, makes equivalent spellings equal. A missing or unreadable config.json
    checks nothing (the checkpoint's own shapes still do)."""
    try:
        old = json.loads((Path(out) / "config.json").read_text())[section]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return
    if not isinstance(old, dict):
        return
    same = (lambda k, a, b: a == b) if normalise is None else (lambda k, a, b: normalise(k, a) == normalise(k, b))
    diff = [k for k in now if k not in free and k in old and not same(k, old[k], now[k])]
    if diff:
        raise HwcostError(f"{out} was started with other settings ({', '.join(f'{k}: {old[k]!r} -> {now[k]!r}' for k in diff)}); "
                          f"resume with the same ones or choose another --out")


# --- the run ------------------------------------------------------------------------------


class TrainRun:
    def __init__(self, cfg: TrainConfig, out: str | os.PathLike, resume: bool = False):
        _check(cfg)
        self.cfg, self.out = cfg, Path(out)
        self.dist = D.init(device="cpu" if cfg.device == "cpu" else None)
        if cfg.device == "cuda" and self.dist.device.type != "cuda":
            raise HwcostError("--device cuda but no CUDA device is available")
        self.device = self.dist.device if cfg.device != "cpu" else torch.device("cpu")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.out.exists() and any(self.out.iterdir()) and not resume:   # every rank decides alike
            raise HwcostError(f"run directory {self.out} is not empty; pass --resume to continue it or "
                              f"choose another --out")
        # Resolve everything a user can get wrong before the run directory exists.
        self.space, self.arch, self.description = resolve_arch(cfg)
        self.data = load_data(cfg.data)
        self.tables = load_tables(cfg.tables, self.space)
        if cfg.network is not None and self.space != "nb201":
            from spaces import NETWORKS
            if cfg.network not in NETWORKS:
                raise HwcostError(f"unknown network {cfg.network!r}; known: {', '.join(NETWORKS)} (or none)")
        if self.data.in_channels not in (1, 3):
            raise HwcostError(f"the eval networks take 3 (or 1, repeated) input channels; "
                              f"data {self.data.name} has {self.data.in_channels}")
        if self.data.input_size % 4:
            raise HwcostError(f"the networks reduce the input twice; size {self.data.input_size} is not a multiple of 4")
        self.train_set, self.test_set = held_out_split(self.data)
        self._resolve_recipe()
        _seed_all(cfg.seed)
        self.net_cfg = self._net_config()
        from spaces import build_network
        self.model = build_network(self.net_cfg)
        _adapt_aux_head(self.model)
        self.model.to(self.device)
        D.broadcast_module(self.model)   # same start on every process
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(self.params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.epoch, self.step = 0, 0
        if resume and (self.out / "checkpoint.pt").exists():
            self._check_same_config()
            self._load_checkpoint()
        D.barrier()                   # every rank has checked --out before rank 0 writes there
        if resume and D.is_main():
            self._truncate_log()      # lines past the checkpoint (all of them if there is none)
        if D.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_config()
        D.barrier()

    # --- configuration -------------------------------------------------------------------
    def _resolve_recipe(self) -> None:
        cfg, size, nb201 = self.cfg, self.data.input_size, self.space == "nb201"
        if nb201 and (cfg.auxiliary or cfg.drop_path):
            raise HwcostError("the NB201 network has no auxiliary head and no drop-path; "
                              "leave --auxiliary and --drop-path unset (or 0)")
        natural = self.data.name in ("cifar10", "imagefolder")
        self.aux_weight = cfg.auxiliary if cfg.auxiliary is not None else (0.0 if nb201 else 0.4)
        self.drop_path = cfg.drop_path if cfg.drop_path is not None else (0.0 if nb201 else 0.2)
        self.cutout = cfg.cutout if cfg.cutout is not None else max(1, round(16 * size / 32))
        self.crop_pad = cfg.crop_pad if cfg.crop_pad is not None else (round(4 * size / 32) if natural else 0)
        self.flip = cfg.flip if cfg.flip is not None else natural
        if self.cutout > size:
            raise HwcostError(f"--cutout {self.cutout} is larger than the {size}x{size} images")

    def _net_config(self):
        cfg, d = self.cfg, self.data
        if self.space == "nb201":
            from spaces import Nb201NetConfig
            return Nb201NetConfig(arch=self.arch, C=cfg.C or 16, N=cfg.layers or 5, num_classes=d.num_classes,
                                  input_size=d.input_size)
        from spaces import CifarNetConfig
        return CifarNetConfig(genotype=self.arch, space=self.space, C=cfg.C or 36, layers=cfg.layers or 20,
                              num_classes=d.num_classes, auxiliary=self.aux_weight > 0, input_size=d.input_size)

    def recipe(self) -> dict:
        """The resolved recipe (defaults filled in for this space and data)."""
        return {"auxiliary_weight": self.aux_weight, "drop_path": self.drop_path, "cutout": self.cutout,
                "crop_pad": self.crop_pad, "flip": self.flip, "train_samples": len(self.train_set),
                "heldout_samples": len(self.test_set), "world_size": D.world_size(), "device": str(self.device)}

    def _write_config(self) -> None:
        net = self.net_cfg.to_dict() if hasattr(self.net_cfg, "to_dict") else asdict(self.net_cfg)
        doc = {"train": self.cfg.to_dict(), "space": self.space, "network_config": net,
               "recipe": self.recipe(), "data": self.data.name}
        (self.out / "config.json").write_text(json.dumps(doc, indent=1, default=str))

    # --- checkpoints ---------------------------------------------------------------------
    def _checkpoint(self) -> None:
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                 "epoch": self.epoch, "step": self.step}
        tmp = self.out / "checkpoint.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.out / "checkpoint.pt")

    # What may change on --resume: reporting, threads, device; everything else fixes the result.
    _RESUME_FREE = ("tables", "network", "threads", "device")

    def _check_same_config(self) -> None:
        check_same_settings(self.out, "train", self.cfg.to_dict(), self._RESUME_FREE)

    def _load_checkpoint(self) -> None:
        def apply(state: dict) -> None:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
        restore_checkpoint(self.out / "checkpoint.pt", apply, map_location=self.device)

    def _truncate_log(self) -> None:
        """Drop log lines of epochs the checkpoint does not hold (they will run again)."""
        path = self.out / "log.jsonl"
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["epoch"] < self.epoch:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError):
                break   # a line cut by the kill
        path.write_text("".join(x + "\n" for x in keep))

    # --- one step ------------------------------------------------------------------------
    def drop_path_at(self, epoch: int) -> float:
        """DARTS's linear ramp: ``p * epoch / epochs`` (0 in the first epoch)."""
        return self.drop_path * epoch / self.cfg.epochs

    def set_train_mode(self) -> None:
        self.model.train()
        if self.cfg.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.expand(-1, 3, -1, -1) if x.size(1) == 1 else x

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss, logits): ``CE(logits) + w_aux * CE(aux_logits)`` when the aux head runs."""
        out = self.model(self._prep(x))
        y = y.to(self.device)
        if isinstance(out, tuple):
            logits, aux = out
            return F.cross_entropy(logits, y) + self.aux_weight * F.cross_entropy(aux, y), logits
        return F.cross_entropy(out, y), out

    def augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = random_crop_flip(x, self.crop_pad, self.flip, g)
        return cutout(x, self.cutout, g)

    def batches(self, epoch: int) -> tuple[list[torch.Tensor], torch.Generator]:
        """The epoch's global batches (index tensors) and the generator that augments them."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        n, b = len(self.train_set), self.cfg.batch_size
        perm = torch.randperm(n, generator=g)
        out = list(perm.split(b))
        if n >= b and len(out[-1]) < b:
            out.pop()     # a short last batch: BN on a handful of samples, uneven shards
        if self.cfg.steps_per_epoch:
            out = out[:self.cfg.steps_per_epoch]
        return out, g

    def train_step(self, x: torch.Tensor, y: torch.Tensor, n_global: int) -> torch.Tensor:
        """One SGD step on this process's shard ``(x, y)`` of a global batch of ``n_global`` samples.

        Returns the global [sum of losses, correct, samples]."""
        self.opt.zero_grad(set_to_none=True)
        loss, logits = self.loss(x, y)
        correct = (logits.detach().argmax(1).cpu() == y).sum().item()
        stats = D.allreduce_sum([loss.item() * len(y), correct, len(y)])
        if not math.isfinite(float(stats[0])):
            self._nonfinite("loss")
        (loss * D.shard_weight(len(y), n_global)).backward()
        D.allreduce_grads(self.params)
        norm = nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        if not torch.isfinite(norm):
            self._nonfinite("gradient")
        self.opt.step()
        self.step += 1
        return stats

    def _nonfinite(self, what: str) -> None:
        ckpt = self.out / "checkpoint.pt"
        where = (f"the last good checkpoint is {ckpt} (epoch {self.epoch}); lower --lr and --resume"
                 if self.epoch > 0 and ckpt.exists() else "no checkpoint was written yet; lower --lr and start again")
        raise HwcostError(f"non-finite {what} at step {self.step} (epoch {self.epoch}); stopped: {where}")

    @torch.no_grad()
    def evaluate(self, ds: Dataset | None = None, batch: int = 256) -> float:
        """Top-1 accuracy on ``ds`` (default: the held-out split); each process scores its shard."""
        ds = self.test_set if ds is None else ds
        self.model.eval()
        start, stop = D.shard_bounds(len(ds))
        correct = 0
        for i in range(start, stop, batch):
            x, y = fetch(ds, torch.arange(i, min(i + batch, stop)))
            correct += int((self.model(self._prep(x)).argmax(1).cpu() == y).sum())
        c, n = D.allreduce_sum([correct, stop - start]).tolist()
        return c / max(1.0, n)

    # --- the loop ------------------------------------------------------------------------
    def run(self, progress: bool = True) -> dict:
        cfg = self.cfg
        bar = None
        if progress and D.is_main():
            per_epoch = len(self.batches(0)[0])
            bar = Progress("train", cfg.epochs * per_epoch, self.epoch * per_epoch)
        t_run = time.perf_counter()
        while self.epoch < cfg.epochs:
            epoch, t0 = self.epoch, time.perf_counter()
            _seed_all(cfg.seed * 1000 + epoch + 7919 * D.rank())   # drop-path masks: per epoch, per process
            lr = lr_at(epoch, cfg.epochs, cfg.lr, cfg.lr_min, cfg.schedule, cfg.power)
            for group in self.opt.param_groups:
                group["lr"] = lr
            dp = self.drop_path_at(epoch)
            if hasattr(self.model, "set_drop_path"):
                self.model.set_drop_path(dp)
            batches, g = self.batches(epoch)
            totals = torch.zeros(3, dtype=torch.float64)
            self.set_train_mode()
            for idx in batches:
                x, y = fetch(self.train_set, idx)
                x = self.augment(x, g)                 # the whole global batch, then this process's part
                xs, ys = D.shard(x, y)
                totals += self.train_step(xs, ys, len(y))
                if bar is not None:
                    bar.step(epoch=epoch, loss=f"{totals[0] / totals[2]:.3f}", acc=f"{totals[1] / totals[2]:.3f}")
            D.allreduce_buffers(self.model)            # BN running statistics: one set for all
            val = self.evaluate()
            self.epoch += 1
            rec = {"epoch": epoch, "step": self.step, "loss": float(totals[0] / totals[2]),
                   "train_acc": float(totals[1] / totals[2]), "val_acc": val, "lr": lr, "drop_path": dp,
                   "seconds": round(time.perf_counter() - t0, 3)}
            if D.is_main():
                with open(self.out / "log.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
                self._checkpoint()
            if bar is not None:
                bar.epoch(f"epoch {self.epoch}/{cfg.epochs}: step {self.step}, loss {rec['loss']:.4f}, train_acc "
                          f"{rec['train_acc']:.4f}, val_acc {val:.4f}, lr {lr:.4g}")
            D.barrier()
        if bar is not None:
            bar.close()
        return self.finish(time.perf_counter() - t_run)

    def finish(self, seconds: float) -> dict:
        """Held-out top-1 accuracy, costs of the trained and the deployed network; result.json."""
        acc = self.evaluate()
        result = {"space": self.space,
                  ("arch" if self.space == "nb201" else "genotype"): (
                      self.arch if self.space == "nb201" else self.arch.to_dict()),
                  "source": self.description, "data": self.data.name, "test_accuracy": acc,
                  "heldout_samples": len(self.test_set), "epochs": self.epoch, "steps": self.step,
                  "train_seconds": round(seconds, 2), "world_size": D.world_size()}
        if not D.is_main():
            return result
        log = (self.out / "log.jsonl").read_text().splitlines()
        if log:
            last = json.loads(log[-1])
            result.update(final_loss=last["loss"], final_train_acc=last["train_acc"])
        from costmodels.analytical import network_costs
        net = self.model.cpu()        # the counters run on CPU; training is over
        shape = (1, 3, self.data.input_size, self.data.input_size)
        c = network_costs(net, shape)
        result["trained"] = {"C": self.net_cfg.C, "layers": getattr(self.net_cfg, "layers", None) or self.net_cfg.N,
                             "input_shape": list(shape), "params": c.params, "params_with_aux": c.params_with_aux,
                             "macs": c.macs, "macs_with_bn": c.macs_with_bn}
        if self.cfg.network is not None:
            result["deployed"] = deployed_costs(self.space, self.arch, self.cfg.network, self.tables)
        (self.out / "result.json").write_text(json.dumps(result, indent=1))
        return result


def run_train(cfg: TrainConfig, out: str | os.PathLike, resume: bool = False, progress: bool = True) -> dict:
    return TrainRun(cfg, out, resume).run(progress)
