"""``hwcost train``: train a derived network from scratch (the DARTS evaluation recipe).

    hwcost train --genotype DARTS_V2 --data digits --C 8 --layers 5 --epochs 20 --out RUN
    hwcost train --space nb201 --arch '|nor_conv_3x3~0|+|...|' --data cifar10:DIR --out RUN
    hwcost train --from-search SEARCH_RUN --data cifar10:DIR --table darts_ort-cpu --out RUN
    torchrun --nproc_per_node 2 -m hwcost.cli train ... --out RUN      # data-parallel

Wire into the CLI with ``add_train_parser(sub)``.
"""
from __future__ import annotations

import argparse
import json


def _none_or(value: str) -> str | None:
    return None if value.lower() == "none" else value


def add_train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a genotype / NB201 arch / search result from scratch and report "
                                     "its held-out accuracy and device costs")
    g = p.add_argument_group("network")
    g.add_argument("--space", default="darts", help="darts | sharpdarts | nb201 (default darts)")
    g.add_argument("--genotype", help="built-in name (e.g. DARTS_V2) or a genotype file (darts, sharpdarts)")
    g.add_argument("--arch", help="NB201 architecture string |op~0|+|op~0|op~1|+|op~0|op~1|op~2|")
    g.add_argument("--from-search", metavar="RUN", help="a search run directory: train its derived network")
    g.add_argument("--C", type=int, help="initial channels (default: the preset's, 36; nb201 16); "
                                         "8 is plenty for digits on a CPU")
    g.add_argument("--layers", type=int, help="cells (default 20; nb201: cells per stage, 5); 5 for digits")
    g = p.add_argument_group("data and recipe")
    g.add_argument("--data", default="digits", help="digits | synthetic | cifar10:DIR | imagefolder:DIR")
    g.add_argument("--epochs", type=int, default=600, help="DARTS: 600")
    g.add_argument("--batch-size", type=int, default=96, help="global batch (split across processes)")
    g.add_argument("--lr", type=float, default=0.025)
    g.add_argument("--lr-min", type=float, default=0.0)
    g.add_argument("--schedule", choices=("cosine", "cpa"), default="cosine",
                   help="cosine, or sharpDARTS's Cosine Power Annealing (with --power)")
    g.add_argument("--power", type=float, default=2.0, help="CPA's p (sharpDARTS: 2 on CIFAR-10)")
    g.add_argument("--weight-decay", type=float, default=3e-4)
    g.add_argument("--grad-clip", type=float, default=5.0)
    g.add_argument("--auxiliary", type=float, help="auxiliary-head loss weight (default 0.4; 0 removes the head)")
    g.add_argument("--drop-path", type=float, help="final drop-path rate, ramped linearly from 0 (default 0.2)")
    g.add_argument("--cutout", type=int, help="cutout side in pixels (default 16 at 32x32, scaled; 0 disables)")
    g.add_argument("--crop-pad", type=int, help="random-crop padding (default 4 at 32x32 for natural images, "
                                                "0 for digits/synthetic)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (default: on for natural images, off for digits)")
    g.add_argument("--freeze-bn", action="store_true", help="BN uses its running statistics while training")
    g.add_argument("--steps-per-epoch", type=int, help="cap the steps of each epoch (smoke runs)")
    g = p.add_argument_group("costs, run")
    g.add_argument("--table", action="append", default=[], metavar="TABLE",
                   help="device table (path or bundled name) to price the deployed network on (repeatable)")
    g.add_argument("--network", default="cifar10", type=_none_or,
                   help="deployed preset whose costs are reported: cifar10 | imagenet | none")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int)
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    g.add_argument("--out", required=True, help="run directory")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--json", action="store_true", help="no progress bar; print result.json")
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(args) -> int:
    from search import distributed as D
    from search.train import TrainConfig, run_train
    cfg = TrainConfig(space=args.space, genotype=args.genotype, arch=args.arch, from_search=args.from_search,
                      data=args.data, C=args.C, layers=args.layers, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, lr_min=args.lr_min, schedule=args.schedule, power=args.power,
                      weight_decay=args.weight_decay, grad_clip=args.grad_clip, auxiliary=args.auxiliary,
                      drop_path=args.drop_path, cutout=args.cutout, crop_pad=args.crop_pad, flip=args.flip,
                      freeze_bn=args.freeze_bn, steps_per_epoch=args.steps_per_epoch, network=args.network,
                      tables=args.table, seed=args.seed, threads=args.threads, device=args.device)
    try:
        r = run_train(cfg, args.out, resume=args.resume, progress=not args.json)
        main = D.is_main()
    finally:
        D.shutdown()
    if not main:          # under torchrun only rank 0 reports
        return 0
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"{r['source']} ({r['space']}) on {r['data']}: top-1 {100 * r['test_accuracy']:.2f}% on "
          f"{r['heldout_samples']} held-out images after {r['epochs']} epochs ({r['train_seconds']:.1f} s, "
          f"{r['world_size']} process{'es' if r['world_size'] > 1 else ''})")
    t = r["trained"]
    print(f"  trained network (C={t['C']}, {t['layers']} cells, input {'x'.join(map(str, t['input_shape']))}): "
          f"{t['params'] / 1e6:.3f} M params, {t['macs'] / 1e6:.2f} M MACs")
    if "deployed" in r:
        d = r["deployed"]
        print(f"  deployed {d['network']} network: {d['params'] / 1e6:.3f} M params, {d['macs'] / 1e6:.1f} M MACs")
        for name, lat in d["latency"].items():
            v = lat["latency_ms"]
            print(f"    {name} ({lat['device']}, {lat['backend']}): "
                  + (f"{v:.3f} ms ({lat['source']})" if v is not None else f"no latency ({lat['source']})"))
    print(f"run directory: {args.out} (result.json, log.jsonl, checkpoint.pt)")
    return 0
