"""The GPU table: memory and peak dense throughput of common NVIDIA GPUs, and this machine's GPU memory."""

from __future__ import annotations

from dataclasses import dataclass

GiB = 2**30


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_gib: float  # total memory as nvidia-smi reports it, in GiB (torch sees ~1-2% less)
    bf16_tflops: float  # peak dense tensor-core TFLOP/s, no sparsity; fp16 where the GPU has no bf16
    model: str  # the word of torch.cuda.get_device_name() that names it: "NVIDIA A100-SXM4-40GB", ...
    variant: str = ""  # what else the name must contain, where a model comes in several
    bf16: bool = True


# NVIDIA datasheets, dense (the "with sparsity" figures are twice these).
KNOWN_GPUS: dict[str, GpuSpec] = {
    "H100 SXM": GpuSpec("H100 SXM", 79.6, 989.0, "H100"),
    "H100 PCIe": GpuSpec("H100 PCIe", 79.6, 756.0, "H100", "PCIE"),
    "H200": GpuSpec("H200", 140.4, 989.0, "H200"),
    "A100 80GB": GpuSpec("A100 80GB", 80.0, 312.0, "A100"),
    "A100 40GB": GpuSpec("A100 40GB", 40.0, 312.0, "A100", "40G"),
    "L40S": GpuSpec("L40S", 45.0, 362.0, "L40S"),
    "A10G": GpuSpec("A10G", 22.5, 70.0, "A10G"),  # AWS's A10 variant; the datacenter A10 is 125
    "L4": GpuSpec("L4", 22.5, 121.0, "L4"),
    "RTX 4090": GpuSpec("RTX 4090", 24.0, 165.0, "4090"),  # fp32 accumulation (GeForce runs it at half the fp16 rate)
    "RTX 3090": GpuSpec("RTX 3090", 24.0, 71.0, "3090"),
    "T4": GpuSpec("T4", 15.0, 65.0, "T4", bf16=False),
    "V100 32GB": GpuSpec("V100 32GB", 32.0, 125.0, "V100", bf16=False),
    "V100 16GB": GpuSpec("V100 16GB", 16.0, 125.0, "V100", "16G", bf16=False),
}


def gpu_spec(name: str) -> GpuSpec | None:
    """A KNOWN_GPUS entry from its key or a torch.cuda.get_device_name() string; None when unknown."""
    if name in KNOWN_GPUS:
        return KNOWN_GPUS[name]
    words = name.upper().replace("-", " ").replace("_", " ").split()
    text = " ".join(words)
    models = [spec.model for spec in KNOWN_GPUS.values()]
    for spec in sorted(KNOWN_GPUS.values(), key=lambda spec: (models.index(spec.model), not spec.variant)):
        # a model's variants before its default; "L4" must not match "L40S", "T4" not "RTX 4090": compare whole
        # words, then the variant anywhere
        model = spec.model
        whole = any(w == model or w.startswith(model) and not w[len(model) :].isdigit() for w in words)
        if whole and spec.variant in text:
            return spec
    return None


def local_gpu_memory_gib() -> float | None:
    """Total memory of this machine's first CUDA GPU, None without one."""
    import torch

    return torch.cuda.get_device_properties(0).total_memory / GiB if torch.cuda.is_available() else None
