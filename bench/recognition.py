"""default-vl's build time and recognition rates; writes JSON.

    python bench/recognition.py [--out bench/results/recognition.json] [--hands 200]
                                [--views 100] [--folder DIR]

Builds default-vl into --folder (a fresh temporary folder by default, so the cache is
neither used nor touched) with the default EyesSettings, timing the build, then measures
exact four-card recognition of its eyes on held-out black-suit and red-suit hands
(`recognition.recognition_report`: Wilson 95% intervals) and place-name recognition on
held-out street views of the training city and the nine visual-OOD cities
(`recognition.place_recognition_report`). The machine's load average is
recorded before and after: the build's time is only comparable on an idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, machine, write_report  # noqa: E402  (bench/ is on sys.path)

sys.path.insert(0, str(REPO))

from sftrl_kit.models import load_policy  # noqa: E402
from sftrl_kit.models.default_vl import EyesSettings, build_default_vl  # noqa: E402
from sftrl_kit.recognition import place_recognition_report, recognition_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS / "recognition.json"))
    parser.add_argument("--hands", type=int, default=200, help="held-out hands per colour")
    parser.add_argument("--views", type=int, default=100, help="held-out street views per city")
    parser.add_argument("--folder", default=None, help="where to build (default: a temporary folder)")
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="default-vl-")) / "model"
    settings = EyesSettings()
    load_before = os.getloadavg()
    start = time.perf_counter()
    build_default_vl(folder, settings)
    build_seconds = time.perf_counter() - start
    policy = load_policy(folder)
    start = time.perf_counter()
    cards = recognition_report(policy, count=args.hands)
    places = place_recognition_report(policy, count=args.views)
    write_report(
        args.out,
        {
            "machine": machine(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "eyes_settings": dataclasses.asdict(settings),
            "build_seconds": round(build_seconds, 1),
            "recognition_seconds": round(time.perf_counter() - start, 1),
            "model_folder": str(folder),
            "recognition": cards,
            "place_recognition": places,
        },
    )


if __name__ == "__main__":
    main()
