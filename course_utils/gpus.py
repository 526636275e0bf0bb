"""The GPUs the planner knows: memory, peak 16-bit tensor FLOP/s, memory bandwidth, each from the vendor's data sheet.

`course_utils.step_time` turns a recipe's work (FLOPs, bytes moved, kernels) into seconds with these
numbers. Peaks are DENSE tensor-core rates for 16-bit matmuls with fp32 accumulation (what PyTorch
uses): data sheets also print twice these "with sparsity", which training does not get. A T4 has no
bf16: its 16-bit rate is fp16 (the course trains it in float16). ``memory_gib`` is the size the data
sheet prints (HBM "80 GB" is 80 GiB of chips; GDDR "24 GB" is 24 GiB), the number the memory planner's
`fits` compares with (it already keeps ~1 GiB and 5% for the CUDA context and the allocator).
``interconnect_GBps`` is what one GPU can send to the others per direction, for the all-reduce of
data-parallel training: NVLink on SXM boards, else the PCIe slot.

>>> GPUS["T4"].peak_flops / 1e12, GPUS["T4"].dtype16
(65.0, 'float16')
>>> get_gpu("h100").name
'H100'
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GPU", "GPUS", "get_gpu"]


@dataclass(frozen=True)
class GPU:
    """One GPU model's data-sheet numbers (see the module docstring for what each means).

    >>> GPUS["A100-80GB"].bandwidth / 1e9
    2039.0
    """

    name: str
    memory_gib: float
    peak_flops: float  # dense 16-bit tensor FLOP/s, fp32 accumulate, no sparsity
    bandwidth: float  # memory bandwidth, bytes/s
    interconnect_GBps: float  # GPU-to-GPU bandwidth per direction, GB/s (NVLink, else PCIe)
    dtype16: str  # the 16-bit dtype its tensor cores run: "bfloat16", or "float16" before Ampere
    source: str

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "memory_GiB": self.memory_gib,
            "peak_TFLOPs": self.peak_flops / 1e12,
            "bandwidth_GBps": self.bandwidth / 1e9,
            "interconnect_GBps": self.interconnect_GBps,
            "dtype16": self.dtype16,
            "source": self.source,
        }


_T = 1e12
_G = 1e9

#: The GPUs by short name. Sparsity figures halved where a data sheet prints only those.
GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU(
            "H200",
            141,
            989 * _T,
            4800 * _G,
            450,
            "bfloat16",
            "NVIDIA H200 Tensor Core GPU data sheet (SXM): BF16 1,979 TFLOPS with sparsity, 4.8 TB/s, 141 GB, "
            "NVLink 900 GB/s",
        ),
        GPU(
            "H100",
            80,
            989 * _T,
            3350 * _G,
            450,
            "bfloat16",
            "NVIDIA H100 Tensor Core GPU data sheet (SXM): BF16 1,979 TFLOPS with sparsity, 3.35 TB/s, 80 GB, "
            "NVLink 900 GB/s",
        ),
        GPU(
            "A100-80GB",
            80,
            312 * _T,
            2039 * _G,
            300,
            "bfloat16",
            "NVIDIA A100 Tensor Core GPU data sheet (80GB SXM): BF16 312 TFLOPS, 2,039 GB/s, NVLink 600 GB/s",
        ),
        GPU(
            "A100-40GB",
            40,
            312 * _T,
            1555 * _G,
            300,
            "bfloat16",
            "NVIDIA A100 Tensor Core GPU data sheet (40GB SXM): BF16 312 TFLOPS, 1,555 GB/s, NVLink 600 GB/s",
        ),
        GPU(
            "L4",
            24,
            121 * _T,
            300 * _G,
            32,
            "bfloat16",
            "NVIDIA L4 Tensor Core GPU data sheet: BF16 242 TFLOPS with sparsity, 300 GB/s, 24 GB, PCIe Gen4 x16",
        ),
        GPU(
            "T4",
            16,
            65 * _T,
            320 * _G,
            16,
            "float16",
            "NVIDIA T4 Tensor Core GPU data sheet: mixed-precision (FP16/FP32) 65 TFLOPS, 320 GB/s, 16 GB, "
            "PCIe Gen3 x16; no bf16",
        ),
        GPU(
            "A10G",
            24,
            70 * _T,
            600 * _G,
            32,
            "bfloat16",
            "AWS EC2 G5 (NVIDIA A10G, no NVIDIA data sheet): 24 GB, 600 GB/s; ~70 TFLOPS 16-bit tensor as AWS "
            "and cloud vendors quote it (the A10 data sheet's 125 TFLOPS is the A10, not the A10G)",
        ),
        GPU(
            "RTX 4090",
            24,
            165.2 * _T,
            1008 * _G,
            32,
            "bfloat16",
            "NVIDIA Ada Lovelace architecture whitepaper (GeForce RTX 4090): FP16/BF16 tensor with FP32 "
            "accumulate 165.2 TFLOPS dense, 1,008 GB/s, 24 GB GDDR6X, PCIe Gen4 x16, no NVLink",
        ),
    )
}

_ALIASES = {"a100": "A100-80GB", "a100-80": "A100-80GB", "a100-40": "A100-40GB", "4090": "RTX 4090"}


def get_gpu(name: str | GPU) -> GPU:
    """The :class:`GPU` named ``name`` (case and spaces do not matter: ``"a100-40gb"``, ``"rtx4090"``).

    >>> get_gpu("rtx4090").memory_gib
    24
    """
    if isinstance(name, GPU):
        return name
    key = str(name).replace(" ", "").replace("_", "-").lower()
    table = {g.replace(" ", "").lower(): g for g in GPUS}
    table.update(_ALIASES)
    table.update({k.replace(" ", "").lower(): v for k, v in _ALIASES.items()})
    for prefix in ("nvidia", "geforce", "tesla"):
        if key.startswith(prefix) and key[len(prefix) :] in table:
            key = key[len(prefix) :]
    if key not in table:
        raise ValueError(f"Unknown GPU {name!r}: the planner knows {', '.join(GPUS)} (course_utils/gpus.py).")
    return GPUS[table[key]]
