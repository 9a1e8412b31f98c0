"""Benchmark: a MiniLM batch padded to its longest text against the same batch run in
length-sorted runs (:mod:`coscale.accel.textbatch`).

For each batch size, ``--repeats`` batches of pool sentences (natural lengths, seeded)
are run twice through the variant's ONNX Runtime session: once as one call padded to the
longest sentence, once through :func:`~coscale.accel.textbatch.run_by_length`. Prints the
median latency of each, their ratio, the mean number of runs, and the smallest cosine
between the two results (the padded and the split results differ only through dynamic
int8's per-tensor activation ranges; ``onnx-fp32`` gives the same embeddings).

Usage::

    python benchmarks/bench_text_runs.py --threads 2
    python benchmarks/bench_text_runs.py --threads 1 --variant onnx-int8-static
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from coscale.accel import sentences
from coscale.accel.minilm import EMBEDDING_DIM, OUTPUT_NAME
from coscale.accel.textbatch import length_runs, run_by_length
from coscale.accel.zoo import get_family


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="onnx-int8-dynamic")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="4,8,16,32,64")
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args(argv)
    family = get_family("minilm")
    variant = family.build(args.variant, threads=args.threads)
    session = getattr(variant, "session", None)
    if session is None:
        raise SystemExit(f"{args.variant} is not an ONNX Runtime variant")

    def padded(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(session.run([OUTPUT_NAME], feeds)[0], dtype=np.float32)

    print(f"minilm {args.variant}, {args.threads} thread(s), {args.repeats} batches each")
    print("batch | runs | padded ms | runs ms | padded ÷ runs | min cosine")
    for size in (int(b) for b in args.batches.split(",")):
        whole, split, runs, cosines = [], [], [], []
        for seed in range(args.repeats):
            feeds = family.tokenizer.encode(sentences.sample_sentences(size, seed * 7919 + size))
            started = time.perf_counter()
            a = padded(feeds)
            middle = time.perf_counter()
            b = run_by_length(feeds, padded, EMBEDDING_DIM)
            whole.append(middle - started)
            split.append(time.perf_counter() - middle)
            runs.append(len(length_runs(feeds["attention_mask"].sum(axis=1))))
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            cosines.append(float(np.min(np.sum(a * b, axis=1) / norms)))
        p, r = statistics.median(whole) * 1e3, statistics.median(split) * 1e3
        print(
            f"{size:5d} | {statistics.mean(runs):4.1f} | {p:9.1f} | {r:7.1f} | "
            f"{p / r:13.2f} | {min(cosines):.6f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
