"""Count the operations that make the host wait for the device while a frame is segmented.

Why: a frame should go from the upload to its one final copy to the host without the Python thread stopping for the
GPU (issue 11 item 4); each hidden `.item()`, `nonzero()` or blocking copy is a pipeline bubble. Two detectors:

  - on CUDA, `torch.cuda.set_sync_debug_mode("warn")`: PyTorch's own list, every warning caught with its stack;
  - on any device (so a CPU-only test can hold the line), a TorchDispatchMode + TorchFunctionMode that record the ops
    that synchronise when they run on CUDA: scalar reads (`item`, `_local_scalar_dense`, `bool()` of a tensor),
    data-dependent output shapes (`nonzero`, boolean-mask indexing, `masked_select`, `unique`, `bincount`,
    `repeat_interleave` without output size), copies to the host (`.cpu()`, `.numpy()`, `.tolist()`, `.to("cpu")`)
    and tensors made from host data on a device (`torch.tensor(..., device=...)`: a blocking upload).

Each event is attributed by its stack: inside a function named in `FINAL_COPY` (the frame's one copy to the host)
or `UPLOAD` it belongs there; anything else is a sync "in the window", what `SyncReport.window` counts.
"""
from __future__ import annotations

import contextlib
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# (file name ending, function name) of the frame's final copy and of its upload: events inside them are expected.
FINAL_COPY: Tuple[Tuple[str, str], ...] = (("ovs_ros/host_copy.py", "frame_to_host"),)
UPLOAD: Tuple[Tuple[str, str], ...] = (("ovs_ros/upload.py", "__call__"),)

_ATEN_SYNCING = {
    "_local_scalar_dense", "is_nonzero", "nonzero", "nonzero_numpy", "argwhere", "masked_select", "unique_dim",
    "_unique", "_unique2", "unique_consecutive", "unique_dim_consecutive", "bincount", "histc", "equal",
    "allclose", "masked_scatter", "_assert_async",
}
_FUNCTION_SYNCING = {"cpu", "numpy", "tolist", "__array__"}
# Scalar reads, also caught at the Python level: under inference_mode the dispatch mode does not see `item()`.
_FUNCTION_SCALAR = {"item", "__bool__", "__int__", "__float__", "__index__"}


@dataclass(frozen=True)
class SyncEvent:
    op: str
    where: str  # "window", "final_copy" or "upload"
    stack: Tuple[str, ...]  # innermost last, "file:line function", the audit's own frames left out

    def site(self) -> str:
        """The innermost project frame: where to look."""
        own = [s for s in self.stack if "ovs_ros" in s or "ovs_training" in s]
        return (own or list(self.stack) or ["?"])[-1]


@dataclass
class SyncReport:
    events: List[SyncEvent] = field(default_factory=list)

    @property
    def window(self) -> List[SyncEvent]:
        return [e for e in self.events if e.where == "window"]

    @property
    def final_copy(self) -> List[SyncEvent]:
        return [e for e in self.events if e.where == "final_copy"]

    def by_site(self) -> Dict[str, int]:
        """`op @ site` -> count, for the events in the window."""
        counts: Dict[str, int] = {}
        for e in self.window:
            key = f"{e.op} @ {e.site()}"
            counts[key] = counts.get(key, 0) + 1
        return counts


def _stack() -> Tuple[str, ...]:
    frames = traceback.extract_stack()[:-1]
    return tuple(f"{f.filename}:{f.lineno} {f.name}" for f in frames if f.filename != __file__
                 and "/torch/" not in f.filename)


def _where(stack: Tuple[str, ...]) -> str:
    for label, sites in (("final_copy", FINAL_COPY), ("upload", UPLOAD)):
        for entry in stack:
            path, _, name = entry.rpartition(" ")
            if any(path.split(":")[0].endswith(file) and name == fn for file, fn in sites):
                return label
    return "window"


def _is_bool_index(indices: Any) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (indices or ()))


class _DispatchRecorder(TorchDispatchMode):
    def __init__(self, record, scalar_depth: List[int]) -> None:
        super().__init__()
        self._record = record
        self._scalar_depth = scalar_depth  # > 0 inside a scalar read the function mode already recorded

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name in ("_local_scalar_dense", "is_nonzero") and self._scalar_depth[0]:
            pass
        elif name in _ATEN_SYNCING:
            self._record(name)
        elif name in ("index", "index_put", "index_put_", "_index_put_impl_") and _is_bool_index(args[1]):
            self._record(f"{name}[bool mask]")
        elif name == "repeat_interleave" and kwargs.get("output_size") is None and len(args) >= 1 \
                and isinstance(args[0], torch.Tensor) and len(args) < 3:
            self._record(name)
        return func(*args, **kwargs)


class _FunctionRecorder(TorchFunctionMode):
    """Host copies that never reach the dispatcher on a CPU tensor, and blocking uploads of host data."""

    def __init__(self, record, scalar_depth: List[int]) -> None:
        super().__init__()
        self._record = record
        self._scalar_depth = scalar_depth

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        owner = getattr(func, "__qualname__", "").split(".")[0]
        if name in _FUNCTION_SCALAR and owner in ("Tensor", "TensorBase"):
            self._record(name)
            self._scalar_depth[0] += 1
            try:
                return func(*args, **kwargs)
            finally:
                self._scalar_depth[0] -= 1
        if name in _FUNCTION_SYNCING and owner in ("Tensor", "TensorBase"):
            self._record(name)
        elif name == "to" and owner in ("Tensor", "TensorBase") and args[0].device.type != "cpu" \
                and _targets_cpu(args[1:], kwargs):  # on a CPU run `.to(self.device)` is no host copy
            self._record("to(cpu)")
        elif name in ("tensor", "as_tensor") and kwargs.get("device") is not None and _host_data(args):
            self._record(f"{name}(host data, device=)")  # a blocking upload on CUDA
        return func(*args, **kwargs)


def _targets_cpu(args, kwargs) -> bool:
    target = kwargs.get("device", args[0] if args else None)
    if isinstance(target, (str, torch.device)):
        return torch.device(target).type == "cpu"
    return False


def _host_data(args) -> bool:
    """`torch.tensor/as_tensor(data, device=...)` uploads unless `data` already is a tensor."""
    return bool(args) and not isinstance(args[0], torch.Tensor)


@contextlib.contextmanager
def audit_syncs(device: Optional[torch.device] = None, *, modes: bool = True) -> Iterator[SyncReport]:
    """Record the host syncs of the code run inside, on CUDA also through PyTorch's sync debug mode.

    `modes=False` on CUDA uses only the debug mode (the real list); the modes catch what would sync on CUDA on a
    CPU run, and on CUDA add the copies the debug mode does not flag.
    """
    report = SyncReport()

    def record(op: str) -> None:
        stack = _stack()
        report.events.append(SyncEvent(op, _where(stack), stack))

    cuda = device is not None and torch.device(device).type == "cuda"
    with contextlib.ExitStack() as stack:
        if cuda:
            stack.enter_context(_cuda_sync_warnings(record))
        if modes:
            depth = [0]
            stack.enter_context(_FunctionRecorder(record, depth))
            stack.enter_context(_DispatchRecorder(record, depth))
        yield report


@contextlib.contextmanager
def _cuda_sync_warnings(record) -> Iterator[None]:
    """PyTorch's sync debug mode on; each "synchronizing CUDA operation" warning becomes an event (with the Python
    stack that triggered it), every other warning is shown as usual; the previous mode is restored."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        original_show = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if "synchroniz" in str(message):
                record(f"cuda_sync: {str(message).splitlines()[0][:80]}")
            else:
                original_show(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)


def audit_segment(segmenter: Any, rgb: Any, *, modes: bool = True, **segment_kwargs: Any) -> SyncReport:
    """One `segmenter.segment(rgb)` under `audit_syncs` (run a warm-up frame first: lazy set-up is not per frame)."""
    with audit_syncs(segmenter.device, modes=modes) as report:
        segmenter.segment(rgb, **segment_kwargs)
    return report
