"""Benchmark (not a test): training wall time of the shipped recipe and per-image scoring time on one CPU core.

    .venv/bin/python -m benchmarks.model_training [--data ../shared/data/cxr] [--images 40] [--train]

* Scoring: the shipped default model (radtriage/model/default) scores PNG films one at a time with
  ``torch.set_num_threads(1)``: preparing (decode, preprocessing, the input gate's backbone pass) and scoring
  (heads on the cached features) are timed separately and together, median and 90th percentile over N images.
  Without the shared data it uses pydicom-data's adult chest film.
* Training (``--train``): ``radtriage model train-triage`` into a temporary folder with 2 threads; the wall time of
  the whole command is printed, and how much of it went into backbone features (the cache under var/features is
  ignored: a fresh cache folder is used, so the figure is a cold start).

Prints figures measured in this run only; compare them with the limits (30 min training on 2 cores, 50 ms per image
on one core) by eye, never in CI.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _images(data: Path | None, count: int) -> list[np.ndarray]:
    from radtriage.imaging.dicom_pixels import load_image_file, pixels_for_display, read_dataset

    if data is not None and (data / "nih" / "images").is_dir():
        files = sorted((data / "nih" / "images").glob("*.png"))[:count]
        return [load_image_file(path) for path in files]
    from tests.support.data import pydicom_data_dir

    chest = pixels_for_display(read_dataset((pydicom_data_dir() / "RG1_J2KI.dcm").read_bytes()))
    return [chest] * count


def benchmark_scoring(data: Path | None, count: int) -> None:
    import torch

    from radtriage.app.core.errors import TriageError
    from radtriage.model.evaluation.score_files import DEFAULT_MODEL_DIR
    from radtriage.model.scorer import XrvScorer

    torch.set_num_threads(1)
    scorer = XrvScorer.from_artefact(DEFAULT_MODEL_DIR, max_threads=1)
    images = _images(data, count)
    scorer.score(scorer.prepare_array(images[0]))  # warm-up
    prepare, score, total = [], [], []
    for image in images:
        t0 = time.perf_counter()
        try:
            prepared = scorer.prepare_array(image)
        except TriageError:
            continue
        t1 = time.perf_counter()
        scorer.score(prepared)
        scorer.severity(prepared)
        t2 = time.perf_counter()
        prepare.append(t1 - t0)
        score.append(t2 - t1)
        total.append(t2 - t0)

    def line(name: str, values: list[float]) -> str:
        return (f"  {name:<28} median {1000 * statistics.median(values):7.1f} ms   "
                f"p90 {1000 * float(np.quantile(values, 0.9)):7.1f} ms")

    print(f"scoring, one CPU core, {len(total)} images ({scorer.identity.name} {scorer.identity.version}):")
    print(line("prepare (decode+gate)", prepare))
    print(line("score + severity", score))
    print(line("per image, all of it", total))


def benchmark_training(data: Path) -> None:
    from radtriage.model.training.triage_build import TriageBuildConfig, build_triage_model

    with tempfile.TemporaryDirectory() as tmp:
        config = TriageBuildConfig(data_root=str(data), cache_dir=str(Path(tmp) / "cache"), bootstrap=200)
        started = time.perf_counter()
        manifest = build_triage_model(config, Path(tmp) / "model", threads=2)
        wall = time.perf_counter() - started
    training = (manifest.evaluation or {}).get("training", {})
    print(f"training, 2 threads: {wall:.0f} s wall for the whole command (train + write + evaluate); "
          f"training {training.get('seconds_total')} s of which backbone features {training.get('seconds_features')} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--train", action="store_true", help="also time a cold-start training (minutes)")
    args = parser.parse_args()
    data = args.data if args.data.is_dir() else None
    benchmark_scoring(data, max(2, min(args.images, 500)))
    if args.train:
        if data is None:
            raise SystemExit("--train needs the shared data (--data)")
        benchmark_training(data)


if __name__ == "__main__":
    main()
