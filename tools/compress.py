"""Deep Compression of a trained classifier (the logic is ``classification.compress``; docs/compression.md):
prune to a plan, retrain with the masks fixed (a ``tools/train_cls.py`` run), share weights at each ``--bits``,
write one ``.dcmp`` file per bit width, and report each stage's top-1 on the val split.

    python tools/compress.py outputs/classify/<run>/checkpoints/last.ckpt --plan squeezenet1_0 --out outputs/dc
    python tools/compress.py <run>/checkpoints/last.ckpt --plan mobilenet_v1 --retrain-epochs 5 solver.lr=0.01
    python tools/compress.py weights.pth --model squeezenet1_0 --plan squeezenet1_0 --retrain-epochs 0
    python tools/compress.py squeezenet1_0 --random-init --num-classes 1000 --plan squeezenet1_0 --no-eval

The trailing ``key=value`` arguments are ``tools/train_cls.py`` overrides: they choose the val split every stage
is evaluated on (``dataset=...``) and configure the retraining run (``solver.lr=...``, ``trainer=ddp``, ...). A
retraining run cut short resumes when the same command is run again.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.process import prepare_process  # noqa: E402  (imports no torch)

prepare_process()

log = logging.getLogger("compress")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a tools/train_cls.py checkpoint, a state-dict file (with --model), or a model name")
    p.add_argument("--plan", required=True, help="a conf/compression/<name> or the path of a plan .yaml")
    p.add_argument("--model", help="the registered model of a state-dict file")
    p.add_argument("--bits", type=int, nargs="+", default=[8, 6], help="codebook bits, one .dcmp file each")
    p.add_argument("--out", default="outputs/compress", help="folder of the files (default: %(default)s)")
    p.add_argument("--retrain-epochs", type=int, default=5, help="epochs of retraining with the masks (0: none)")
    p.add_argument("--random-init", action="store_true", help="source is a model name: compress random weights")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of a --random-init model")
    p.add_argument("--seed", type=int, default=0, help="seed of a --random-init model")
    p.add_argument("--no-eval", action="store_true", help="sizes only, no top-1 (e.g. a 1000-class model here)")
    p.add_argument("overrides", nargs="*", help="tools/train_cls.py overrides (dataset, solver, trainer, ...)")
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse(argv)
    import torch

    import backbones
    from classification import compress as lib

    cfg = lib.classify_config(args.overrides)  # bad overrides, plans and bits fail here, before any work
    for bits in args.bits:
        lib.load_plan(args.plan, bits)
    if cfg.get("cpu_threads") and cfg["trainer"].get("accelerator") == "cpu":
        torch.set_num_threads(int(cfg["cpu_threads"]))
    if args.random_init:
        torch.manual_seed(args.seed)
        model, options = backbones.create_model(args.source, num_classes=args.num_classes).eval(), {}
    else:
        model, _, info = lib.trained_model(args.source, args.model)
        hp = info.get("hyper_parameters") or {}
        options = {k: v for k, v in (hp.get("model_options") or {}).items() if k != "pretrained"}
    epochs = args.retrain_epochs
    rows = lib.compress(
        model,
        args.plan,
        args.out,
        bits=args.bits,
        dataset_cfg=None if args.no_eval else cfg["dataset"],
        retrain_overrides=[f"epochs={epochs}", *args.overrides] if epochs > 0 else None,
        options=options,
        first_stage="random init" if args.random_init else "trained",
    )
    print(lib.stage_table(rows))
    print(json.dumps({r["stage"]: r.get("sections", r.get("bytes")) for r in rows if "bytes" in r}))


if __name__ == "__main__":
    main()
