"""Draw detections (or the ground truth) on images and write PNG files.

python tools/visualize.py --ann ANN.json --images DIR --out vis/                      # ground truth
python tools/visualize.py --ann ANN.json --images DIR --results RUN/eval/coco_results_step0001250.json --out vis/
python tools/visualize.py --ann ANN.json --images DIR --results R.json --score 0.5 --limit 20 --out vis/

Predictions are COCO results (what tools/train_net.py writes to <run dir>/eval/); boxes are drawn in green
(ground truth) and in a colour per class with "name score" (predictions). An image that cannot be read is skipped
with a warning; the exit status is 1 when no image could be drawn, 2 for bad arguments or files (nothing written).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detection.visualize import draw_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ann", required=True, help="COCO annotation JSON (image list, class names, ground truth)")
    ap.add_argument("--images", required=True, help="folder the annotation's file_name entries are relative to")
    ap.add_argument("--results", help="COCO results JSON to draw; without it the ground truth is drawn")
    ap.add_argument("--out", required=True, help="output folder for the PNG files")
    ap.add_argument("--score", type=float, default=0.3, help="draw predictions with at least this score")
    ap.add_argument("--limit", type=int, default=16, help="number of images, >= 0 (0 = all)")
    ap.add_argument("--gt", action="store_true", help="also draw the ground truth under the predictions")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        report = draw_dataset(args.ann, args.images, args.out, args.results, args.score, args.limit, args.gt)
    except (ValueError, FileNotFoundError) as e:  # bad arguments or files, named by the library; nothing written
        ap.error(str(e))
    skipped = f"; skipped {len(report.skipped)} that could not be read (named above)" if report.skipped else ""
    print(f"wrote {len(report.written)} images into {args.out}{skipped}")
    return 0 if report.written else 1


if __name__ == "__main__":
    raise SystemExit(main())
