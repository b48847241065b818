"""The evaluation end to end at a small size: one held-out seed, 2×, the untrained tiny SVD
pipeline (the embedded model when it is shipped), ZeroSmooth against direct inference and the
training-free baselines. ``pytest bench/bench_evaluate.py``; the time of one full table row set is
what the benchmark measures, the table itself is printed."""

import pytest

from zerosmooth.demo import embedded_model_path
from zerosmooth.lab import evaluate


@pytest.fixture(scope="module")
def model():
    return "embedded" if (embedded_model_path() / "model_index.json").is_file() else "tiny"


def test_bench_evaluate(benchmark, tmp_path, model):
    args = ["--model", model, "--out", str(tmp_path), "--seeds", "2", "--scales", "2", "--steps", "4",
            "--methods", "repeat,blend,direct,latent_ddnm,zerosmooth", "--threads", "1"]
    if model == "tiny":
        args += ["--frames", "4"]
    rows = benchmark.pedantic(lambda: evaluate.evaluate(evaluate.parse_args(args)), rounds=1, iterations=1)
    benchmark.extra_info["table"] = evaluate.markdown_table(rows)
