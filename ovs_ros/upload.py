"""One frame from host memory to the device: on CUDA through a reused pinned staging buffer with a non-blocking copy
(a pageable source would make the copy synchronous), on the CPU without any copy."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch


class FrameUploader:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._staging: Optional[torch.Tensor] = None
        self._copied: Optional["torch.cuda.Event"] = None  # the last copy out of the staging buffer

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB -> [1, 3, H, W] float32 in 0..1 on the device."""
        host = torch.from_numpy(np.ascontiguousarray(rgb))
        if self.device.type != "cuda":
            return host.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        if self._staging is None or self._staging.shape != host.shape:
            self._staging = torch.empty(host.shape, dtype=torch.uint8, pin_memory=True)
        elif self._copied is not None:
            self._copied.synchronize()  # normally long done (the previous frame ended with a copy to the host)
        self._staging.copy_(host)
        tensor = self._staging.to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record()
        return tensor.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
