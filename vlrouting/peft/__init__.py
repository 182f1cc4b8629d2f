"""PEFT modules that carry routing (Adapter, LoRA, GPT-2's merged q|v LoRA, Compacter, Hyperformer, half-shared
adapters, PETAL's DMA) and prompt tuning, attached to Hugging Face models by wrapping modules."""

from vlrouting.peft import adapter as _adapter  # noqa: F401  (registers "adapter")
from vlrouting.peft import compacter as _compacter  # noqa: F401  (registers "compacter")
from vlrouting.peft import dma as _dma  # noqa: F401  (registers "dma")
from vlrouting.peft import half_shared as _half_shared  # noqa: F401  (registers "half_shared_adapter")
from vlrouting.peft import hyperformer as _hyperformer  # noqa: F401  (registers "hyperformer")
from vlrouting.peft import lora as _lora  # noqa: F401  (registers "lora")
from vlrouting.peft import merged_lora as _merged_lora  # noqa: F401  (registers "merged_qv_lora")
from vlrouting.peft import prompt as _prompt  # noqa: F401  (registers "prompt")
from vlrouting.peft.attach import (
    attach_peft,
    count_parameters,
    format_parameter_report,
    mark_trainable,
    peft_parameters,
    peft_wrappers,
)
from vlrouting.peft.config import AimConfig, DmaConfig, PeftConfig, SibConfig
from vlrouting.peft.io import load_peft, save_peft, save_peft_init
from vlrouting.peft.registry import PEFT_METHODS, get_peft_method, register_peft_method
from vlrouting.peft.state import RoutingState, masked_mean

__all__ = [
    "AimConfig", "DmaConfig", "PEFT_METHODS", "PeftConfig", "SibConfig", "RoutingState", "attach_peft", "count_parameters", "format_parameter_report",
    "get_peft_method", "load_peft", "mark_trainable", "masked_mean", "peft_parameters", "peft_wrappers",
    "register_peft_method", "save_peft", "save_peft_init",
]
