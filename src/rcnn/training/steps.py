"""Training steps: forward, cross-entropy, backward, optimizer step and the epoch's running
sums, either launched kernel by kernel (:class:`EagerStep`) or captured once as a CUDA graph
and replayed (:class:`GraphedStep`)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from rcnn.runtime.device import amp_dtype, default_amp

logger = logging.getLogger(__name__)


class EagerStep:
    """One training step on a batch, kernel by kernel. The epoch's summed loss and correct
    count stay on the device (:meth:`sums`), so a step never waits for the GPU."""

    def __init__(self, model, optimizer, amp=False):
        self.model, self.optimizer = model, optimizer
        self.device = next(model.parameters()).device
        self.amp = default_amp(self.device) if amp is None else amp
        self.dtype = amp_dtype(self.device)
        # float16 needs its gradients scaled to stay representable; bfloat16 does not.
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp and self.dtype == torch.float16
        )
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.seen = 0

    def reset(self) -> None:
        """Zeroes the running sums in place (a captured graph keeps adding to the same ones)."""
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen = 0

    def sums(self):
        return self.loss_sum, self.correct, self.seen

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self._step(images, labels)
        self.seen += len(labels)

    def _step(self, images, labels) -> None:
        # No autocast cache: a captured graph must not keep casts made outside it.
        with torch.autocast(self.device.type, self.dtype, self.amp, cache_enabled=False):
            logits = self.model(images)
        loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.loss_sum += loss.detach().double() * len(labels)
        self.correct += (logits.argmax(1) == labels).sum()


class GraphedStep(EagerStep):
    """The same step captured as a CUDA graph after ``warmup`` eager steps, then replayed: one
    launch a step instead of AlexNet's ~100 kernels launched one by one from Python.

    The graph holds its own input buffers (each batch is copied in), the gradients, the
    optimizer's update with the learning rate of the moment it was captured (captured again
    when a scheduler changes it) and the running sums. Dropout draws fresh numbers at every
    replay (PyTorch's CUDA generator advances its offset per replay). A batch of another shape
    (a short last batch) runs eagerly.
    """

    def __init__(self, model, optimizer, amp=False, warmup=3):
        super().__init__(model, optimizer, amp)
        if self.device.type != "cuda" or self.scaler.is_enabled():
            raise ValueError("CUDA graphs need a CUDA device and no float16 loss scaling")
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captured_for: tuple | None = None
        self.images = self.labels = None
        self.captures = 0

    def _key(self, images, labels) -> tuple:
        lrs = tuple(float(group["lr"]) for group in self.optimizer.param_groups)
        return (tuple(images.shape), images.dtype, tuple(labels.shape), lrs)

    def _step(self, images, labels) -> None:
        key = self._key(images, labels)
        if key != self.captured_for:
            if self.graph is not None and key[:3] != self.captured_for[:3]:
                return super()._step(images, labels)  # a batch of another shape
            if self.warmup > 0:
                self.warmup -= 1
                return self._eager_on_side_stream(images, labels)
            self._capture(images, labels, key)
        self.images.copy_(images)
        self.labels.copy_(labels)
        self.graph.replay()

    def _eager_on_side_stream(self, images, labels) -> None:
        # Warm-up steps on a side stream, as PyTorch's documentation asks before a capture:
        # lazily made state (momentum buffers, cuDNN's choices) then exists outside the graph.
        side, current = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            super()._step(images, labels)
        current.wait_stream(side)

    def _capture(self, images, labels, key) -> None:
        """Captures the step for ``key`` (not run by the capture: the caller replays it)."""
        self.graph = None  # frees the previous graph's memory first
        self.images = torch.empty_like(images)
        self.labels = torch.empty_like(labels)
        # Gradients made inside the capture come from the graph's own memory and are written,
        # not accumulated, at every replay.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the checkpoint writer's copies on another thread may go on meanwhile.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            super()._step(self.images, self.labels)
        self.graph, self.captured_for = graph, key
        self.captures += 1
        logger.info("training step captured as a CUDA graph (%s, lr %s)", key[0], key[3])
