"""The benchmark plots are drawn from the JSON the benchmarks write, and a malformed file is
named in the error."""
import json

from bench import benchmark_plots as BP


def _e2e():
    return {"tick_latency_s": 0.05, "rows": [
        {"actors": n, "env_steps_per_s": 18.0 * n * (1.0 if n < 16 else 0.9),
         "broadcast_p50_ms": 20.0 + n, "broadcast_p99_ms": 30.0 + 5 * n} for n in (1, 2, 4, 16)]}


def _learner(device):
    return {"device_name": "X", "threads": 2, "batch_size": 256,
            "ours": [{"name": "ours fp32", "feed": "host", "updates_per_s": 6.0}],
            "sb3": {"updates_per_s": 4.0, "device": device}}


def test_plots_are_written_from_the_json_files(tmp_path):
    (tmp_path / BP.E2E).write_text(json.dumps(_e2e()))
    (tmp_path / BP.LEARNER_FILES[0]).write_text(json.dumps(_learner("cpu")))
    (tmp_path / BP.LEARNER_FILES[-1]).write_text(json.dumps(_learner("cuda")))
    assert BP.main(["--dir", str(tmp_path)]) == 0
    for name in ("e2e_scaling.png", "learner_throughput.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_weight_transport_is_drawn_and_needs_its_own_baseline(tmp_path):
    two = {"rows": [dict(r, weights_transport=t) for t in ("shm", "board") for r in _e2e()["rows"]]}
    (tmp_path / BP.E2E).write_text(json.dumps(two))
    assert BP.main(["--dir", str(tmp_path)]) == 0
    assert (tmp_path / "e2e_scaling.png").exists()
    two["rows"] = [r for r in two["rows"] if not (r["weights_transport"] == "board" and r["actors"] == 1)]
    (tmp_path / BP.E2E).write_text(json.dumps(two))
    assert BP.main(["--dir", str(tmp_path)]) == 2


def test_a_malformed_file_is_named(tmp_path, capsys):
    broken = _e2e()
    del broken["rows"][0]["env_steps_per_s"]
    (tmp_path / BP.E2E).write_text(json.dumps(broken))
    assert BP.main(["--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "e2e_scaling.json" in err and "env_steps_per_s" in err


def test_missing_files_are_skipped(tmp_path):
    assert BP.main(["--dir", str(tmp_path)]) == 0
    assert not list(tmp_path.iterdir())


def test_the_mid_episode_p99_is_drawn_where_a_run_has_it(tmp_path):
    run = _e2e()
    run["rows"][-1]["mid_episode_p99_ms"] = 70.0
    series = BP._e2e_series(run, tmp_path / BP.E2E)
    assert [r[4] for r in series["board"]] == [None, None, None, 70.0]
    (tmp_path / BP.E2E).write_text(json.dumps(run))
    assert BP.main(["--dir", str(tmp_path)]) == 0
