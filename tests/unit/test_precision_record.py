"""A run keeps the learner precision it chose first (deploy/precision_record.py)."""
import json

import pytest

from common import config as C
from deploy import precision_record as pr


def test_an_auto_run_keeps_what_it_recorded_on_the_same_kind_of_device(tmp_path):
    auto = C.LearnerConfig(execution=C.LearnerExecution(precision=C.Precision.AUTO))
    assert pr.pinned(auto, tmp_path, "cpu") is auto  # nothing recorded yet: measure
    pr.write_record(tmp_path, "cpu", "auto", "bf16")
    assert pr.pinned(auto, tmp_path, "cpu").execution.precision is C.Precision.BF16
    assert pr.pinned(auto, tmp_path, "cuda").execution.precision is C.Precision.AUTO  # measure
    assert json.loads((tmp_path / pr.RECORD).read_text()) == {
        "configured": "auto", "device": "cpu", "precision": "bf16"}


@pytest.mark.parametrize("explicit", ["fp32", "bf16"])
def test_an_explicit_precision_ignores_the_record(tmp_path, explicit):
    pr.write_record(tmp_path, "cpu", "auto", "bf16" if explicit == "fp32" else "fp32")
    cfg = C.LearnerConfig(execution=C.LearnerExecution(precision=C.Precision(explicit)))
    assert pr.pinned(cfg, tmp_path, "cpu") is cfg


@pytest.mark.parametrize("content", ["", "{", "[]", '{"precision": "fp16", "device": "cpu"}'])
def test_a_damaged_record_is_measured_anew(tmp_path, content, caplog):
    (tmp_path / pr.RECORD).write_text(content)
    auto = C.LearnerConfig(execution=C.LearnerExecution(precision=C.Precision.AUTO))
    assert pr.pinned(auto, tmp_path, "cpu") is auto
    assert "precision_record_" in caplog.text


def test_only_a_resolved_precision_is_recorded(tmp_path):
    with pytest.raises(ValueError, match="'auto'"):
        pr.write_record(tmp_path, "cpu", "auto", "auto")
    assert not (tmp_path / pr.RECORD).exists()
