"""bench/gpu_check.sh is run on a lent GPU machine, whose time is short and which no CI runs:
its calls are checked here against the command lines they call, so a renamed flag fails
here rather than in that call."""
import importlib
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def python_calls(text: str) -> list[list[str]]:
    """The argument lists after ``"$PY" -m`` in the script (up to a redirection),
    continuation lines joined."""
    joined = text.replace("\\\n", " ")
    calls = []
    for line in joined.splitlines():
        if line.lstrip().startswith("#") or '"$PY" -m ' not in line:
            continue
        words = shlex.split(line.split('"$PY" -m ', 1)[1].replace("$OUT", "/out"))
        redirect = [i for i, w in enumerate(words) if w.startswith(">") or w.startswith("2>")]
        calls.append(words[:redirect[0]] if redirect else words)
    return calls


def test_python_calls_are_found():
    modules = [words[0] for words in python_calls(SCRIPT.read_text())]
    assert modules == ["pip", "pytest", "bench.learner_throughput", "bench.learner_profile"]
    # A script rendered with a flag the parser lacks is caught by the test below.
    bad = python_calls('step x 1 "$PY" -m bench.learner_profile --no-such-flag\n')
    with pytest.raises(SystemExit):
        importlib.import_module("bench.learner_profile").build_parser().parse_args(bad[0][1:])


@pytest.mark.parametrize("words", python_calls(SCRIPT.read_text()), ids=lambda w: w[0])
def test_each_call_parses(words):
    module, args = words[0], words[1:]
    if module == "pip":  # only the carried wheels, none fetched (the machine has no network)
        assert args[0] == "install" and "--no-deps" in args and args[-1] == ".whl/*.whl"
        return
    if module == "pytest":
        targets = [a for a in args if not a.startswith("-") and a != "no:cacheprovider"]
        assert targets and all((ROOT / t).is_file() for t in targets)
        return
    bench = importlib.import_module(module)
    parsed = bench.build_parser().parse_args(args)
    assert parsed.device == "cuda" and parsed.json.startswith("/out/")
    if module == "bench.learner_throughput":
        bench.check_round_sizes(parsed)
        assert parsed.replay_feeds and parsed.variant
        for variant in parsed.variant:
            bench.parse_variant(variant)


@pytest.mark.parametrize("variant", ["fp16", "bf16:graph", "fp32:blocks:strided"])
def test_a_bad_variant_is_named(variant):
    from bench.learner_throughput import parse_variant

    with pytest.raises(SystemExit, match=f"variant '{variant}'"):
        parse_variant(variant)


def test_a_variant_resolves():
    from bench.learner_throughput import parse_variant

    assert parse_variant("bf16:compile:graphs:pre_step") == (
        "bf16", {"compile", "graphs", "pre_step"}, "auto")
    assert parse_variant("fp32:strided")[2] == "strided"
