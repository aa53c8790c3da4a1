"""Print the model zoo table (measured params and mult-adds vs the papers), or write it into the README.

python tools/model_zoo.py                      # print the table
python tools/model_zoo.py --pattern "nasnet*"  # some models
python tools/model_zoo.py --write-readme       # refresh the table between the zoo markers of README.md
python tools/model_zoo.py --write-conf         # regenerate conf/backbone/ (registry), conf/detector/ (DETECTORS)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones.zoo import markdown_table, replace_between_markers, zoo_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pattern", default="*", help="shell-style filter on model names")
    ap.add_argument("--write-readme", action="store_true", help="write the table into README.md")
    ap.add_argument("--write-conf", action="store_true", help="write conf/backbone/*.yaml and conf/detector/*.yaml")
    args = ap.parse_args(argv)
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
        readme = ROOT / "README.md"
        from training.atomic import write_text_atomic

        write_text_atomic(readme, replace_between_markers(readme.read_text(), table))
        print(f"wrote {len(rows)} rows into {readme}")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
