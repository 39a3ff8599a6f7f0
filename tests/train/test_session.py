"""The run's Accelerator: one process may train several runs of different precisions."""

from __future__ import annotations

from accelerate import Accelerator
from accelerate.state import AcceleratorState

from tunelab.train.session import build_accelerator


def test_a_run_starts_after_another_precision_was_set_in_the_same_process() -> None:
    # what a bf16 or fp16 run leaves behind on a GPU; on a CPU autocast to bf16 is the same
    # process-wide state, and accelerate refuses to change it without a reset
    AcceleratorState._reset_state()  # whatever earlier tests of this process left
    Accelerator(mixed_precision="bf16", cpu=True)
    accelerator = build_accelerator("fp32")
    assert accelerator.mixed_precision == "no"
    assert build_accelerator("fp32").mixed_precision == "no"
