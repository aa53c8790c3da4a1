"""Time our models against their timm/torchvision twins in the same process (interleaved, median of repeats).

    python tools/benchmark.py resnext50_32x4d se_resnext50_32x4d densenet121 --batch-size 8
    python tools/benchmark.py nasnet_a_large --input-size 331 --batch-size 1 --modes forward
    python tools/benchmark.py shufflenet_v1_g3_x2_0 --baseline mobilenet_v1_x1_0     # no twin: compare GMAC/s
    python tools/benchmark.py densenet121 --peak-memory --option memory_efficient=True
    python tools/benchmark.py --all --device cuda --channels-last --amp
    python tools/benchmark.py resnext50_32x4d densenet121 --repeats 7 --json docs/benchmarks/twins_cpu.json
    python tools/benchmark.py --render docs/benchmarks/*.json --write docs/benchmarks.md

Prints a Markdown table: median ms, images/s, mult-adds/s, peak memory, and ours/twin = our time / twin time
(< 1 means ours is faster), with the machine it ran on. ``--json FILE`` also stores the run (machine, date, load
average before and after, settings, every row and repeat); ``--render`` turns stored files into the docs' tables.
"""

from __future__ import annotations

import argparse
import ast
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import backbones  # noqa: E402
from backbones.atomic import write_text_atomic  # noqa: E402
from backbones.benchmark import (  # noqa: E402
    TIMING_COLUMNS,
    begin_report,
    check_options,
    check_report_path,
    compare,
    cpu_peak_mb,
    end_report,
    format_table,
    load_report,
    render_files,
    render_report,
    timing_rows,
    write_report,
)


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
    ap.add_argument("--modes", default="forward,train", help="comma-separated: forward, train")
    ap.add_argument("--twin", choices=("timm", "torchvision"), default=None)
    ap.add_argument("--baseline", default=None, help="compare with another registered model instead of the twin")
    ap.add_argument("--peak-memory", action="store_true", help="also measure peak memory of each step")
    ap.add_argument("--option", action="append", default=[], type=_option, help="model option key=value (ours)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the run (machine, load, rows) as JSON")
    ap.add_argument("--render", nargs="+", default=None, metavar="JSON", help="render stored --json files")
    ap.add_argument("--write", default=None, metavar="DOC", help="with --render: fill DOC's bench:<name> blocks")
    args = ap.parse_args(argv)
    if args.write and not args.render:
        ap.error("--write DOC needs --render JSON [JSON ...]")
    if args.json:
        check_report_path(args.json)
    if args.render:
        if args.write:
            write_text_atomic(args.write, render_files(args.render, args.write))
            print(f"rendered {len(args.render)} report(s) into {args.write}")
        else:
            print("\n\n".join(render_report(load_report(p)) for p in args.render))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in backbones.list_models() if backbones.model_card(n).twins] if args.all else args.models
    if not names:
        ap.error("name at least one model, or --all")
    modes = tuple(m for m in args.modes.split(",") if m)
    try:
        check_options(args.batch_size, args.repeats, args.warmup, modes, args.input_size)
        for n in [*names, *([args.baseline] if args.baseline else [])]:
            backbones.model_card(n)  # an unknown name is named with close matches
    except (TypeError, ValueError) as e:
        ap.error(str(e))
    except KeyError as e:
        ap.error(e.args[0])
    options = dict(args.option)
    settings = {k: v for k, v in vars(args).items() if k not in ("models", "all", "json", "render", "write")}
    report = begin_report("twins", "python tools/benchmark.py " + shlex.join(sys.argv[1:] if argv is None else argv),
                          {**settings, "models": names}, args.device)  # fmt: skip
    print(f"# machine: {json.dumps(report['machine'])}, load average {report['load_before']}")
    print(
        "# layout: "
        + (
            "ours and twin channels-last (--channels-last)"
            if args.channels_last
            else "ours channels-last parameters (the create_model default), twin contiguous (its default); "
            "--channels-last puts both in channels-last, --option channels_last=False keeps ours contiguous"
        )
    )
    keys = ("batch_size", "input_size", "device", "channels_last", "amp", "repeats", "warmup", "baseline")
    common = {**{k: getattr(args, k) for k in keys}, "modes": modes, "twin_lib": args.twin, "options": options}
    results = []
    for name in names:
        rs = compare(name, **common)
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
    if args.json:
        report = end_report(report, TIMING_COLUMNS, timing_rows(results))
        write_report(args.json, report)
        print(f"wrote {args.json} (load average after: {report['load_after']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
