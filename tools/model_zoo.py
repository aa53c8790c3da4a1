"""Print the model zoo table (measured params and mult-adds vs the papers), or write it into the README.

python tools/model_zoo.py                      # print the table
python tools/model_zoo.py --pattern "nasnet*"  # some models
python tools/model_zoo.py --write-readme       # refresh the table between the zoo markers of README.md
python tools/model_zoo.py --write-conf         # regenerate conf/backbone/<name>.yaml from the registry
python tools/model_zoo.py --weights-table      # refresh the weights table between the markers of docs/weights.md
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones.weights.table import END, START, weights_table  # noqa: E402
from backbones.zoo import markdown_table, replace_between_markers, write_backbone_confs, zoo_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pattern", default="*", help="shell-style filter on model names")
    ap.add_argument("--write-readme", action="store_true", help="write the table into README.md")
    ap.add_argument("--write-conf", action="store_true", help="write conf/backbone/<name>.yaml for every model")
    ap.add_argument("--weights-table", action="store_true", help="write the weights table into docs/weights.md")
    args = ap.parse_args(argv)
    if args.weights_table:
        _write(ROOT / "docs" / "weights.md", weights_table(), START, END)
        return 0
    if args.write_conf:
        names = write_backbone_confs(ROOT / "conf" / "backbone")
        print(f"wrote {len(names)} files into {ROOT / 'conf' / 'backbone'}")
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


def _write(path: Path, table: str, *markers: str) -> None:
    """Replace the table between the markers of ``path`` (written to a temporary name, then renamed)."""
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(replace_between_markers(path.read_text(), table, *markers))
    os.replace(tmp, path)
    print(f"wrote the table into {path}")


if __name__ == "__main__":
    raise SystemExit(main())
