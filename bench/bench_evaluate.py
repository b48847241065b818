"""The evaluation end to end at a small size: two held-out seeds, 2× and 4×, the embedded model (the
untrained tiny SVD pipeline when a checkout does not ship it), the paper's table rows.
``pytest bench/bench_evaluate.py -q``: the benchmark times one full table; the table itself is
printed in the terminal summary."""

import pytest

from zerosmooth.demo import embedded_model_path
from zerosmooth.lab import evaluate


@pytest.fixture(scope="module")
def model():
    return "embedded" if (embedded_model_path() / "model_index.json").is_file() else "tiny"


def test_bench_evaluate(benchmark, tmp_path, model, report):
    args = ["--model", model, "--out", str(tmp_path), "--seeds", "2", "--steps", "4",
            "--methods", "repeat,blend,direct,latent_ddnm,paper,zerosmooth", "--threads", "1"]
    if model == "tiny":
        args += ["--frames", "4", "--size", "32"]
    rows = benchmark.pedantic(lambda: evaluate.evaluate(evaluate.parse_args(args)), rounds=1, iterations=1)
    for line in evaluate.markdown_table(rows).splitlines():
        report.line(f"evaluation ({model} model, 2 seeds, 4 steps; noisy with so few seeds)", line)
