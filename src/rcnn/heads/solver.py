"""A Newton solver of the SVMs' objective, in torch on the stage's device, for several classes
at once.

The objective is liblinear's (``-s 3``, the solver R-CNN and Fast R-CNN used): an
L2-regularized hinge loss whose bias is a weight of a constant feature ``bias`` and so is
regularized too::

    0.5 (|w|^2 + w_b^2) + sum_i U_i max(0, 1 - y_i (w . x_i + bias * w_b)),  U_i = C c_i

with ``c_i`` the positive weight for positives and 1 for negatives. Following Chapelle
("Training a support vector machine in the primal", 2007), the hinge is replaced by its
Huber smoothing of width ``delta`` (quadratic on ``0 < 1 - m < delta``), a piecewise-quadratic
problem that Newton's method solves in a few steps; at ``delta`` 1e-4 the two objectives differ
by less than ``1e-4 / 2`` times the weight of the few examples on the margin. A Newton step
solves ``(I + X_Q^T diag(U_Q / delta) X_Q) s = -g`` over the examples ``Q`` in the quadratic
zone, by Woodbury's identity (``|Q|`` is small: the examples on the margin) or by conjugate
gradients when it is not; the step length is the exact minimizer along ``s``.

Several classes are solved together when their examples are rows of one matrix (each class
using some of them: a weight of 0 leaves a row out of its problem): every product with the
features is then one matrix product for all classes, which reads the features once instead of
once a class. The work is in dense products, so it runs as well on a GPU, and a refit starts
from the class's previous solution.

The examples are :class:`Rows`: float16 features (the negative pool, as it is stored) are read
a block at a time in float32 by every product, so no float32 copy of them, which would take
twice the pool's memory, is ever made.
"""

from __future__ import annotations

import torch

DELTA = 1e-4  # the hinge's smoothing width
MAX_STEPS = 100  # Newton steps a width
WOODBURY_MAX = 2048  # beyond this many examples on the margin, conjugate gradients
TOLERANCE = 1e-6  # a step that lowers a class's objective by less (relative) ends its solve
BLOCK_BYTES = 32 * 2**20  # float32 bytes of float16 rows converted at a time by a product


class Rows:
    """The examples' features: the rows of ``parts`` (float16 or float32 ``[n_i, D]`` tensors
    on one device) one after another, used only through products, so that float16 parts are
    converted a block of rows at a time, never all at once. Products return float32."""

    dtype = torch.float32

    def __init__(self, parts: list[torch.Tensor]):
        self.parts = [part for part in parts if len(part)] or parts[:1]
        self.shape = (sum(len(part) for part in parts), parts[0].shape[1])
        self.device = parts[0].device

    def __len__(self) -> int:
        return self.shape[0]

    def blocks(self):
        """``(first row, float32 block)`` covering every row in order: a float32 part whole,
        a float16 one in blocks of about :data:`BLOCK_BYTES`."""
        start, step = 0, max(1, BLOCK_BYTES // (4 * self.shape[1]))
        for part in self.parts:
            if part.dtype == torch.float32:
                yield start, part
            else:
                for begin in range(0, len(part), step):
                    yield start + begin, part[begin : begin + step].float()
            start += len(part)

    def __matmul__(self, w: torch.Tensor) -> torch.Tensor:
        """``X w`` (``w [D, k]``): ``[N, k]``."""
        out = torch.empty(len(self), w.shape[1], dtype=w.dtype, device=self.device)
        for start, block in self.blocks():
            torch.matmul(block, w, out=out[start : start + len(block)])
        return out

    def rmatmul(self, r: torch.Tensor) -> torch.Tensor:
        """``r^T X`` (``r [N, k]``): ``[k, D]``, reading the rows in their own order (faster
        than ``X^T r``)."""
        rt = r.T.contiguous()
        if len(self.parts) == 1 and self.parts[0].dtype == torch.float32:
            return rt @ self.parts[0]
        out = torch.zeros(r.shape[1], self.shape[1], dtype=r.dtype, device=self.device)
        for start, block in self.blocks():
            out.addmm_(rt[:, start : start + len(block)], block)
        return out

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        """The rows ``index`` (a 1-D integer tensor), float32 ``[len(index), D]``."""
        return self.take(index, torch.float32)

    def take(self, index: torch.Tensor, dtype=None) -> torch.Tensor:
        """The rows ``index`` in that order, in ``dtype`` (default: the parts' own, float32
        where they differ)."""
        if dtype is None:
            dtypes = {part.dtype for part in self.parts}
            dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
        out = torch.empty(len(index), self.shape[1], dtype=dtype, device=self.device)
        start = 0
        for part in self.parts:
            inside = (index >= start) & (index < start + len(part))
            if bool(inside.any()):
                out[inside] = part[index[inside] - start].to(dtype)
            start += len(part)
        return out


def huber(z: torch.Tensor, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The smoothed hinge of ``z = 1 - margin`` and its derivative."""
    slope = (z / delta).clamp_(0.0, 1.0)
    loss = torch.where(slope < 1, slope * z / 2, z - delta / 2)
    return loss, slope


class Problem:
    """The examples ``scale * x [N, D]`` and, per class (a column), their labels ``y [N, K]``
    (+1 or -1) and loss weights ``u [N, K]`` (0: not an example of that class). Solutions are
    ``[D + 1, K]``: the weights, then the weight of the bias feature. The scale is applied in
    the products, never to a copy of the features."""

    def __init__(self, x, y, u, bias: float, scale: float = 1.0):
        x = x if isinstance(x, Rows) else Rows([x])
        self.x, self.y, self.u, self.bias, self.scale = x, y, u, bias, scale

    def margins(self, v: torch.Tensor, columns=slice(None)) -> torch.Tensor:
        """``y (scale x . w + bias * w_b)`` of the classes ``columns``: ``[N, k]``."""
        return self.y[:, columns] * (self.scale * (self.x @ v[:-1]) + self.bias * v[-1])

    def transpose(self, r: torch.Tensor) -> torch.Tensor:
        """``X~^T r`` (with the bias column): ``[D + 1, k]``."""
        product = self.x.rmatmul(r).T
        return torch.cat([self.scale * product, self.bias * r.sum(0, keepdim=True)])

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """``X~`` of some examples, bias column included, in float64 (the small solves)."""
        x = self.x[index].double() * self.scale
        column = torch.full((len(index), 1), self.bias, dtype=x.dtype, device=x.device)
        return torch.cat([x, column], 1)

    def objective(self, v: torch.Tensor, z: torch.Tensor, delta: float, columns) -> torch.Tensor:
        """The smoothed objective of each class of ``columns`` (float64 ``[k]``)."""
        loss = (self.u[:, columns] * huber(z, delta)[0]).double().sum(0)
        return 0.5 * (v.double() ** 2).sum(0) + loss


def newton_steps(p: Problem, v, z, delta: float, columns: torch.Tensor) -> torch.Tensor:
    """The Newton directions ``[D + 1, k]`` of the classes ``columns`` at ``v`` (``z = 1 -
    margins``, ``[N, k]``)."""
    u = p.u[:, columns]
    g = v - p.transpose(u * huber(z, delta)[1] * p.y[:, columns])
    steps = -g
    for j in range(len(columns)):
        margin = torch.nonzero((z[:, j] > 0) & (z[:, j] < delta) & (u[:, j] > 0)).squeeze(1)
        if len(margin) == 0:
            continue
        weights = (u[margin, j] / delta).double()
        if len(margin) <= WOODBURY_MAX:
            xq = p.rows(margin)
            inner = torch.diag(1 / weights) + xq @ xq.T
            gj = g[:, j].double()
            steps[:, j] = -(gj - xq.T @ torch.linalg.solve(inner, xq @ gj)).to(g.dtype)
        else:
            steps[:, j] = -_conjugate_gradients(p, margin, weights.to(g.dtype), g[:, j])
    return steps


def _conjugate_gradients(p: Problem, margin, weights, g, steps: int = 200) -> torch.Tensor:
    """Solves ``(I + X_Q^T diag(weights) X_Q) s = g`` by conjugate gradients."""
    ones = torch.ones_like(weights)[:, None]
    xq = Problem(Rows([p.x.take(margin)]), ones, weights[:, None], p.bias, p.scale)

    def hessian(v):
        return v + xq.transpose(weights[:, None] * xq.margins(v[:, None]))[:, 0]

    s = torch.zeros_like(g)
    r = g.clone()
    d = r.clone()
    rr = float(r @ r)
    for _ in range(steps):
        hd = hessian(d)
        alpha = rr / float(d @ hd)
        s += alpha * d
        r -= alpha * hd
        rr, previous = float(r @ r), rr
        if rr <= 1e-12 * float(g @ g):
            break
        d = r + (rr / previous) * d
    return s


def line_search(p: Problem, v, s, z, delta: float, columns) -> tuple[torch.Tensor, torch.Tensor]:
    """The step ``t [k]`` minimizing each class's smoothed objective along its ``s``, and
    ``z`` there.

    The objective's derivative along ``s`` is piecewise linear and increasing in ``t``;
    Newton's method on it, kept inside a bracket of the root, finds the root exactly once no
    example crosses into or out of the quadratic zone (a few evaluations)."""
    a = p.margins(s, columns)  # z(t) = z - t a
    ua = p.u[:, columns] * a
    vs, ss = (v * s).sum(0), (s * s).sum(0)
    k = len(columns)
    low = torch.zeros(k, dtype=z.dtype, device=z.device)
    high = torch.full_like(low, float("inf"))
    t = torch.ones_like(low)
    for _ in range(40):
        ratio = (z - t * a) / delta
        inside = (ratio > 0) & (ratio < 1)
        first = vs + t * ss - (ua * ratio.clamp_(0.0, 1.0)).sum(0)
        second = ss + (ua * a * inside).sum(0) / delta
        done = first.abs() <= 1e-10 * vs.abs().clamp(min=1.0)
        low = torch.where(first < 0, t, low)
        high = torch.where(first >= 0, t, high)
        done |= (high - low) <= 1e-6 * high
        if bool(done.all()):
            break
        guess = t - first / second  # Newton; bisect when it leaves the bracket
        bisect = torch.where(high.isinf(), 2 * low + 1, (low + high) / 2)
        guess = torch.where((guess <= low) | (guess >= high), bisect, guess)
        t = torch.where(done, t, guess)
    return t, z - t * a


def solve_svms(x, y, u, bias: float, scale: float = 1.0, start=None) -> tuple[torch.Tensor, int]:
    """``[D + 1, K]`` weights (the last row the bias feature's: a class's intercept is ``bias``
    times it) minimizing each class's objective of the module's notes, and the Newton steps
    taken (the most any class took).

    Args:
        x: float32 ``[N, D]`` features, or :class:`Rows`, on the device to solve on; the
            examples are ``scale * x``.
        y: ``[N, K]`` labels of each class, +1 or -1 (same device).
        u: ``[N, K]`` loss weights (``C`` times the positive weight or 1; 0 for a row that is
            no example of the class).
        start: previous solutions ``[D + 1, K]`` to start from (the classes' last trainings).
    """
    x = x if isinstance(x, Rows) else Rows([x])
    p = Problem(x, y.to(x.dtype), u.to(x.dtype), bias, scale)
    v = torch.zeros(x.shape[1] + 1, y.shape[1], dtype=x.dtype, device=x.device)
    if start is not None:
        v = start.to(x.device, x.dtype).clone()
    steps = 0
    delta = DELTA
    everyone = torch.arange(y.shape[1], device=x.device)
    z = 1 - p.margins(v)
    value = p.objective(v, z, delta, everyone)
    active = everyone
    for step in range(1, MAX_STEPS + 1):
        zs = z[:, active]
        s = newton_steps(p, v[:, active], zs, delta, active)
        t, zs = line_search(p, v[:, active], s, zs, delta, active)
        v[:, active] += t * s
        z[:, active] = zs
        now = p.objective(v[:, active], zs, delta, active)
        converged = value[active] - now <= TOLERANCE * now.abs()
        value[active] = now
        steps = step
        active = active[~converged]
        if len(active) == 0:
            break
    return v, steps


def solve_svm(x, y, C: float, pos_weight: float, bias: float, start=None, scale: float = 1.0):
    """One class's solution ``[D + 1]`` (labels ``y [N]``, +1 or -1) and its Newton steps."""
    y = y.to(x.dtype)
    u = torch.where(y > 0, C * pos_weight, C).to(x.dtype)
    start = None if start is None else start[:, None]
    v, steps = solve_svms(x, y[:, None], u[:, None], bias, scale, start)
    return v[:, 0], steps
