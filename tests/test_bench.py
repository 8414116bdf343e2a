"""The bench table's arithmetic (the bench itself runs both servers: `effort bench serve`)."""

import pytest
from effort_server.server.bench import _table


def run(throughput, p50):
    return {"throughput": throughput, "p50": p50, "p99": 2 * p50, "ttft50": p50 / 10, "tokens": 100}


def ratio_cells(table: str) -> list[str]:
    row = next(line for line in table.splitlines() if "ours / vLLM" in line)
    return [c.strip().strip("*") for c in row.strip("|").split("|")][3:]


def test_ratio_is_the_median_of_paired_repeats():
    # the machine slows down between repeats 1-2 and 3-4: both servers are hit in the same repeat
    vllm = [run(100, 1.0), run(100, 1.0), run(50, 2.0), run(50, 2.0)]
    ours = [run(99, 1.01), run(98, 1.02), run(49, 2.04), run(48, 2.06)]
    table = _table({(1, False): {"vllm": vllm, "ours": ours}}, {"vllm": 10.0, "ours": 12.0})
    thr, p50, p99, ttft = ratio_cells(table)
    assert float(thr) == pytest.approx(0.98, abs=0.006)  # per repeat 0.99, 0.98, 0.98, 0.96
    assert float(p50) == pytest.approx(1.02, abs=0.006)  # per repeat 1.01, 1.02, 1.02, 1.03
    assert "| 1 | no | vllm | 75 | 1.500 |" in table  # the values themselves: medians over repeats
    assert "vLLM 10.0 s, ours 12.0 s" in table


def test_ratio_pairs_each_repeat_not_the_medians():
    # drifting machine: per-repeat ratios 1.05, 1.105, 0.967 -> 1.05; the ratio of the medians
    # (2.1 / 1.9) would pair ours' middle run with a different repeat of vLLM's and say 1.105
    vllm = [run(100, 1.0), run(100, 1.9), run(100, 3.0)]
    ours = [run(100, 1.05), run(100, 2.1), run(100, 2.9)]
    _, p50, _, _ = ratio_cells(_table({(16, True): {"vllm": vllm, "ours": ours}}, {"vllm": 1.0, "ours": 1.0}))
    assert float(p50) == 1.05


@pytest.mark.parametrize("max_tokens", [256, 40, 10])
def test_bench_budget_is_what_our_policy_enforces_at_full_effort(max_tokens):
    from effort_server.server.bench import full_effort_budget
    from effort_server.server.config import ServerSettings
    from effort_server.server.policy import Policy

    d = Policy(ServerSettings(), {}, "tiny", full_effort_tokens=100).decide(
        model=None, effort=1.0, max_tokens=max_tokens
    )
    assert full_effort_budget(max_tokens) == d.thinking_budget


def test_paired_line_reports_the_median_per_request_ratio_and_its_spread():
    from effort_server.server.bench import paired_line

    line = paired_line({False: [0.9, 1.0, 1.02, 1.1, 1.2], True: [0.97]})
    assert "not streamed 1.020 (IQR 0.950-1.150, 5 requests)" in line
    assert "streamed 0.970 (IQR 0.970-0.970, 1 requests)" in line
    table = _table(
        {(1, False): {"vllm": [run(100, 1.0)], "ours": [run(100, 1.0)]}}, {"vllm": 1.0, "ours": 1.0}, note=line
    )
    assert line in table.splitlines()


@pytest.mark.parametrize(
    "requests,waves,conc,expected", [(32, 8, 1, 32), (32, 8, 16, 128), (200, 8, 16, 200), (1, 1, 1, 1)]
)
def test_scenario_sends_at_least_waves_rounds_of_the_concurrency(requests, waves, conc, expected):
    from effort_server.server.bench import scenario_requests

    assert scenario_requests(requests, waves, conc) == expected


def test_bench_rejects_zero_waves():
    from effort_server.server.bench import BenchConfig

    with pytest.raises(ValueError, match="--waves"):
        BenchConfig(waves=0)
