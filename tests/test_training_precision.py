"""Which precision a training run uses: bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere."""

from __future__ import annotations

import logging

import pytest
import torch

from embedpipe.training import run
from embedpipe.training.config import TrainingConfig

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, native):
    monkeypatch.setattr(run, "cpu_has_native_bf16", lambda: native)
    assert run._precision(TrainingConfig(precision="auto"), CPU) is native


def test_bf16_on_a_cpu_without_native_bf16_falls_back_to_fp32_with_a_note(monkeypatch, caplog):
    monkeypatch.setattr(run, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.INFO, logger="embedpipe.training.run"):
        assert run._precision(TrainingConfig(precision="bf16"), CPU) is False
    assert "no native bf16" in caplog.text and "fp32" in caplog.text


def test_fp32_stays_fp32_and_gpus_autocast_unless_fp32(monkeypatch):
    monkeypatch.setattr(run, "cpu_has_native_bf16", lambda: True)
    assert run._precision(TrainingConfig(precision="fp32"), CPU) is False
    cuda = torch.device("cuda", 0)
    assert run._precision(TrainingConfig(precision="auto"), cuda) is True
    assert run._precision(TrainingConfig(precision="bf16"), cuda) is True
    assert run._precision(TrainingConfig(precision="fp32"), cuda) is False


def test_native_bf16_probe_answers_a_bool():
    assert isinstance(run.cpu_has_native_bf16(), bool)
