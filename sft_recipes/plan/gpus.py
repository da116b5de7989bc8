"""The GPU table: memory and peak dense throughput of common NVIDIA GPUs, and this machine's GPU memory."""

from __future__ import annotations

from dataclasses import dataclass

GiB = 2**30


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_gib: float  # total memory as nvidia-smi reports it, in GiB (torch sees ~1-2% less)
    bf16_tflops: float  # peak dense tensor-core TFLOP/s, no sparsity; fp16 where the GPU has no bf16
    bf16: bool = True


# NVIDIA datasheets, dense (the "with sparsity" figures are twice these).
KNOWN_GPUS: dict[str, GpuSpec] = {
    "H100 SXM": GpuSpec("H100 SXM", 79.6, 989.0),
    "H100 PCIe": GpuSpec("H100 PCIe", 79.6, 756.0),
    "H200": GpuSpec("H200", 140.4, 989.0),
    "A100 80GB": GpuSpec("A100 80GB", 80.0, 312.0),
    "A100 40GB": GpuSpec("A100 40GB", 40.0, 312.0),
    "L40S": GpuSpec("L40S", 45.0, 362.0),
    "A10G": GpuSpec("A10G", 22.5, 70.0),  # AWS's A10 variant; the datacenter A10 is 125
    "L4": GpuSpec("L4", 22.5, 121.0),
    "RTX 4090": GpuSpec("RTX 4090", 24.0, 165.0),  # fp32 accumulation (GeForce runs it at half the fp16 rate)
    "RTX 3090": GpuSpec("RTX 3090", 24.0, 71.0),
    "T4": GpuSpec("T4", 15.0, 65.0, bf16=False),
    "V100 32GB": GpuSpec("V100 32GB", 32.0, 125.0, bf16=False),
    "V100 16GB": GpuSpec("V100 16GB", 16.0, 125.0, bf16=False),
}
# torch.cuda.get_device_name() spellings, most specific first: "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", ...
_GPU_PATTERNS = (
    ("H100", "PCIE", "H100 PCIe"),
    ("H100", "", "H100 SXM"),
    ("H200", "", "H200"),
    ("A100", "40G", "A100 40GB"),
    ("A100", "", "A100 80GB"),
    ("L40S", "", "L40S"),
    ("A10G", "", "A10G"),
    ("L4", "", "L4"),
    ("4090", "", "RTX 4090"),
    ("3090", "", "RTX 3090"),
    ("T4", "", "T4"),
    ("V100", "16G", "V100 16GB"),
    ("V100", "", "V100 32GB"),
)


def gpu_spec(name: str) -> GpuSpec | None:
    """A KNOWN_GPUS entry from its key or a torch.cuda.get_device_name() string; None when unknown."""
    if name in KNOWN_GPUS:
        return KNOWN_GPUS[name]
    words = name.upper().replace("-", " ").replace("_", " ").split()
    text = " ".join(words)
    for model, variant, key in _GPU_PATTERNS:
        # "L4" must not match "L40S", "T4" not "RTX 4090": compare whole words, then the variant anywhere
        whole = any(w == model or w.startswith(model) and not w[len(model) :].isdigit() for w in words)
        if whole and variant in text:
            return KNOWN_GPUS[key]
    return None


def local_gpu_memory_gib() -> float | None:
    """Total memory of this machine's first CUDA GPU, None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / GiB
