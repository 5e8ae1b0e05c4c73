"""Turn the `device` config group into a torch device and dtype, refusing what cannot work."""

from __future__ import annotations

import torch

from gdlab.errors import GdlabError

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
DEVICE_TYPES = ("cpu", "cuda", "auto")


def resolve_dtype(name: str) -> torch.dtype:
    """Map `device.dtype` to a torch dtype."""
    try:
        return DTYPES[str(name)]
    except KeyError:
        allowed = ", ".join(DTYPES)
        raise GdlabError(f"device.dtype={name!r} is not supported; allowed: {allowed}") from None


def resolve_device(kind: str) -> tuple[torch.device, str]:
    """Map `device.type` to a torch device, plus a sentence saying what was chosen and why.

    `auto` picks CUDA when torch sees a GPU and the CPU otherwise; asking for `cuda` where there
    is none is an error, never a silent fallback.
    """
    kind = str(kind)
    if kind not in DEVICE_TYPES:
        raise GdlabError(
            f"device.type={kind!r} is not supported; allowed: {', '.join(DEVICE_TYPES)}"
        )
    if kind == "cpu":
        return torch.device("cpu"), "cpu"
    cuda_ok = torch.cuda.is_available()
    if kind == "cuda":
        if not cuda_ok:
            raise GdlabError(
                "device=cuda but no CUDA device is available (torch.cuda.is_available() is False); "
                "use device=cpu or device=auto"
            )
        return torch.device("cuda"), f"cuda ({torch.cuda.get_device_name(0)})"
    if cuda_ok:
        return torch.device(
            "cuda"
        ), f"cuda ({torch.cuda.get_device_name(0)}), chosen by device=auto"
    return torch.device("cpu"), "cpu, chosen by device=auto (no CUDA device found)"
