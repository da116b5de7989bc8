"""Checks of what a run reaches outside itself: the Hub it pushes to, the trackers it reports to, the kernels it
patches in. Each fails inside `trainer.__init__` or at the first step otherwise, after the weights loaded."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sft_recipes.validate.validation import Validation


def check_hub(v: Validation) -> None:
    """push_to_hub: the Trainer creates the repo in its __init__, which needs the Hub and a token with write access."""
    t = v.recipe.training
    if not t.push_to_hub:
        return
    from huggingface_hub import constants, get_token

    if constants.is_offline_mode():
        v.add(
            v.key("push_to_hub"),
            "the hub is unreachable: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, and the trainer creates the "
            "hub repo before the first step",
            "unset HF_HUB_OFFLINE to push, or set push_to_hub: false and upload output_dir later "
            "(`hf upload REPO output_dir`)",
        )
        return
    if get_token() is None:
        v.add(
            v.key("push_to_hub"),
            "no Hugging Face token: the trainer cannot create the hub repo",
            "run `hf auth login`, or set HF_TOKEN (or hub_token) to a token with write access",
        )
        return
    if int(os.environ.get("RANK", "0")) != 0:
        return  # one request per launch: the other ranks of train's preflight skip it
    from huggingface_hub import whoami

    try:
        whoami()
    except Exception as err:  # noqa: BLE001 - unreachable, refused or rejected: the push would fail the same way
        v.add(
            v.key("push_to_hub"),
            f"cannot reach the hub with this token ({type(err).__name__}: {str(err).splitlines()[0]})",
            "check the network and the token (`hf auth whoami`), or set push_to_hub: false",
        )


def check_trackers(v: Validation) -> None:
    """report_to: each tracker's callback, built as the Trainer builds it (a missing package raises there)."""
    t = v.recipe.training
    wanted = t.report_to if isinstance(t.report_to, list) else [t.report_to] if t.report_to else []
    wanted = [name for name in wanted if name not in ("none", "all")]
    if not wanted:
        return
    from transformers.integrations import get_reporting_integration_callbacks

    try:
        callbacks = get_reporting_integration_callbacks(wanted)
    except ValueError as err:
        v.add(v.key("report_to"), str(err), "use one of those names, or none")
        return
    for name, callback in zip(wanted, callbacks, strict=True):
        try:
            callback()
        except (RuntimeError, ImportError, ValueError) as err:
            v.add(
                v.key("report_to"),
                f"{name}: {str(err).splitlines()[0]}",
                "pip install 'sft-recipes[tracking]' (tensorboard)"
                if name == "tensorboard"
                else f"install {name}'s package, or drop {name} from report_to",
            )


def check_kernels(v: Validation) -> None:
    """use_liger_kernel: transformers patches the model with liger-kernel's triton kernels, which need a GPU."""
    t = v.recipe.training
    if not t.use_liger_kernel:
        return
    from transformers.utils import is_liger_kernel_available

    deprecated = (
        "TRL 1.16 deprecates use_liger_kernel in favour of Hub kernels (model_init_kwargs: {use_kernels: true})"
    )
    if not is_liger_kernel_available():
        v.add(
            v.key("use_liger_kernel"),
            f"needs liger-kernel >= 0.3.0, which is not installed; {deprecated}",
            "pip install 'sft-recipes[liger]' on a GPU machine, or remove use_liger_kernel",
        )
    elif t.use_cpu:
        v.add(
            v.key("use_liger_kernel"),
            "liger-kernel's triton kernels need a GPU, and this run trains on CPU (use_cpu)",
            "remove use_liger_kernel to train on CPU",
        )
