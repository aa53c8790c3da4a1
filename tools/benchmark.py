"""Time our models against their timm/torchvision twins in the same process (interleaved, median of repeats).

    python tools/benchmark.py resnext50_32x4d se_resnext50_32x4d densenet121 --batch-size 8
    python tools/benchmark.py nasnet_a_large --input-size 331 --batch-size 1 --modes forward
    python tools/benchmark.py shufflenet_v1_g3_x2_0 --baseline mobilenet_v1_x1_0     # no twin: compare GMAC/s
    python tools/benchmark.py densenet121 --peak-memory --option memory_efficient=True
    python tools/benchmark.py --all --device cuda --channels-last --amp
    python tools/benchmark.py mobilenet_v1_x1_0 --precisions fp32,bf16,int8 --modes forward   # ours in 3 precisions

Prints a Markdown table: median ms, images/s, mult-adds/s, peak memory, and ours/twin = our time / twin time
(< 1 means ours is faster), with the machine it ran on.
"""

from __future__ import annotations

import argparse
import ast
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import backbones  # noqa: E402
from backbones.benchmark import compare, cpu_peak_mb, format_table  # noqa: E402


def _option(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*")
    ap.add_argument("--all", action="store_true", help="every model with a twin")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--input-size", type=int, default=None, help="default: the card's input size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CPU, fp16 on CUDA")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--modes", default="forward,train")
    ap.add_argument("--twin", choices=("timm", "torchvision"), default=None)
    ap.add_argument("--baseline", default=None, help="compare with another registered model instead of the twin")
    ap.add_argument("--peak-memory", action="store_true", help="also measure peak memory of each step")
    ap.add_argument("--option", action="append", default=[], type=_option, help="model option key=value (ours)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precisions", default=None, help="time ours in fp32,bf16,int8 (CPU) instead of against a twin")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in backbones.list_models() if backbones.model_card(n).twins] if args.all else args.models
    if not names:
        ap.error("name at least one model, or --all")
    modes = tuple(args.modes.split(","))
    options = dict(args.option)
    print(
        f"# machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
    )
    print(
        "# layout: "
        + (
            "ours and twin channels-last (--channels-last)"
            if args.channels_last
            else "ours channels-last parameters (the create_model default), twin contiguous (its default); "
            "--channels-last puts both in channels-last, --option channels_last=False keeps ours contiguous"
        )
    )
    if args.precisions:
        return _precisions(names, args, modes, options)
    results = []
    for name in names:
        rs = compare(
            name,
            batch_size=args.batch_size,
            input_size=args.input_size,
            device=args.device,
            channels_last=args.channels_last,
            amp=args.amp,
            repeats=args.repeats,
            warmup=args.warmup,
            modes=modes,
            twin_lib=args.twin,
            baseline=args.baseline,
            options=options,
        )
        if args.peak_memory and args.device == "cpu":
            for r in rs:
                opts = options if r.impl == "ours" else {}
                model = r.model if r.impl.startswith("ours") else name
                impl = "ours" if r.impl.startswith("ours") else r.impl
                r.peak_mb = cpu_peak_mb(model, impl, r.mode, r.batch_size, r.input_size, **opts)
        results.extend(rs)
        print(format_table(rs), flush=True)
    if len(names) > 1:
        print("\n## all\n" + format_table(results))
    return 0


def _precisions(names: list[str], args: argparse.Namespace, modes: tuple[str, ...], options: dict) -> int:
    from backbones.quantize import format_precision_table, time_precisions

    precisions = tuple(args.precisions.split(","))
    results = []
    for name in names:
        kw = {"batch_size": args.batch_size, "input_size": args.input_size, "repeats": args.repeats}
        rs = time_precisions(name, precisions, modes=modes, warmup=args.warmup, options=options, **kw)
        results.extend(rs)
        print(format_precision_table(rs), flush=True)
    if len(names) > 1:
        print("\n## all\n" + format_precision_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
