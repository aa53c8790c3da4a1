"""Print the model zoo table (measured params and mult-adds vs the papers), or write it into the README.

python tools/model_zoo.py                      # print the table
python tools/model_zoo.py --pattern "nasnet*"  # some models
python tools/model_zoo.py --write-readme       # refresh the table between the zoo markers of README.md
python tools/model_zoo.py --write-conf         # regenerate conf/backbone/ (registry), conf/detector/ (DETECTORS)
python tools/model_zoo.py --plot docs/zoo.png  # draw published top-1 against mult-adds and parameters
python tools/model_zoo.py --weights-table      # refresh the weights table between the markers of docs/weights.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones.atomic import write_text_atomic  # noqa: E402
from backbones.weights.table import END, START, weights_table  # noqa: E402
from backbones.zoo import markdown_table, replace_between_markers, zoo_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, table: str, *markers: str) -> None:
    """Replace the table between the markers of ``path`` (atomically)."""
    write_text_atomic(path, replace_between_markers(path.read_text(), table, *markers))
    print(f"wrote the table into {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pattern", default="*", help="shell-style filter on model names")
    ap.add_argument("--write-readme", action="store_true", help="write the table into README.md")
    ap.add_argument("--write-conf", action="store_true", help="write conf/backbone/*.yaml and conf/detector/*.yaml")
    ap.add_argument("--plot", default=None, metavar="FILE", help="draw top-1 vs mult-adds and params into FILE")
    ap.add_argument("--weights-table", action="store_true", help="write the weights table into docs/weights.md")
    args = ap.parse_args(argv)
    if args.plot:
        from backbones.zoo_plot import plot_zoo, plotted_rows

        rows = zoo_rows(args.pattern)
        plot_zoo(args.plot, rows)
        print(f"drew {len(plotted_rows(rows))} models with a published top-1 into {args.plot}")
        return 0
    if args.weights_table:
        _write(ROOT / "docs" / "weights.md", weights_table(), START, END)
        return 0
    if args.write_conf:
        from detection.config import write_detector_confs
        from training.config import write_backbone_confs

        for group, write in (("backbone", write_backbone_confs), ("detector", write_detector_confs)):
            names = write(ROOT / "conf" / group)
            print(f"wrote {len(names)} files into {ROOT / 'conf' / group}")
        return 0
    rows = zoo_rows(args.pattern)
    if not rows:
        ap.error(f"no registered model matches {args.pattern!r}")
    table = markdown_table(rows)
    if args.write_readme:
        _write(ROOT / "README.md", table)
    else:
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
