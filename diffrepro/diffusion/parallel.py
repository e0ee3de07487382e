"""Parallel-in-time DDIM: the whole trajectory as one triangular system, solved by iteration.

With x_T and every per-step noise fixed up front, DDIM is the recursion

    X[0] = x_T,    X[i + 1] = F_i(X[i]) = a_i X[i] + b_i eps(X[i], t_i) + c_i z_i,

for steps i = 0..N-1 (noisiest first, the order `DDIMSampler` walks). A parallel solver
guesses the states of a window of steps, evaluates the network on all of them in ONE
batched call, and updates the guesses; the states before the first unconverged step are
final. Two solvers share that skeleton:

- `ParaTAASolver` (Tang et al., ICML 2024): k-th order updates, Triangular Anderson
  Acceleration with memory m (m = 1 is plain fixed-point iteration), per-step stopping.
- `PicardSolver` (ParaDiGMS, Shih et al., NeurIPS 2023): Picard iteration from the window
  start, window slid past the first step whose change exceeds its tolerance.

Where the released ParaTAA code departs from our rules (how states entering a sliding
window start; which history rows TAA uses), its rule is an option (`ENTRY_RULES`,
`HISTORY_RULES`); the defaults are the rules used before these options existed.

Each solver works on ONE trajectory (its window, convergence and stopping are per image,
so results do not depend on the batch); `solve_in_lockstep` runs many at once, stacking
their windows into one network call per parallel iteration. States are float64, as in the
ParaTAA code, so the solver's own arithmetic adds no error that float32 would. They live on
the device of x_T, as the release keeps them on the GPU: a solver there adds no transfers.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields
from typing import Protocol, Sequence

import numpy as np
import torch

from .guidance import GuidedDenoiser
from .samplers import DDIMSampler


# --------------------------------------------------------------------------------------
# The DDIM trajectory as an affine recursion
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trajectory:
    """Per-step coefficients of X[i+1] = a_i X[i] + b_i eps_i + c_i z_i (float64)."""

    timesteps: torch.Tensor      # (N,) original timestep of each step's network call
    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    posterior_std: torch.Tensor  # (N,) DDPM noise scale of each step: relative tolerances use it

    @classmethod
    def from_sampler(cls, sampler: DDIMSampler, device=None) -> "Trajectory":
        """device: where the states will live (default: the CPU)."""
        if not isinstance(sampler, DDIMSampler):
            raise ValueError(f"parallel sampling solves the DDIM trajectory; got sampler "
                             f"{getattr(sampler, 'name', sampler)!r} (set sampling.sampler: ddim)")
        device = torch.device("cpu") if device is None else device
        coeffs = torch.tensor([sampler.affine_coefficients(i) for i in range(len(sampler.timesteps))],
                              dtype=torch.float64, device=device)
        return cls(torch.as_tensor(sampler.timesteps, device=device), coeffs[:, 0], coeffs[:, 1], coeffs[:, 2],
                   torch.as_tensor(sampler.posterior_std, dtype=torch.float64, device=device))

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def to(self, device) -> "Trajectory":
        """The same coefficients on `device` (values unchanged: float64 copies)."""
        return Trajectory(*(getattr(self, f.name).to(device) for f in fields(self)))

    def draw_noise(self, shape: Sequence[int], generator: torch.Generator | None) -> torch.Tensor:
        """z_i for every step, drawn in the order the sequential sampler draws them (one
        randn per step with c_i > 0), so both solve the same equations."""
        z = torch.zeros(self.steps, *shape, dtype=torch.float64, device=self.c.device)
        for i in torch.nonzero(self.c > 0).flatten().tolist():
            if generator is None:
                raise ValueError("stochastic DDIM (eta > 0) needs one torch.Generator per image")
            # drawn where the generator lives (the sequential sampler's numbers), then moved
            z[i] = torch.randn(tuple(shape), generator=generator, dtype=torch.float32,
                               device=generator.device).to(z.device, torch.float64)
        return z


def rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square over everything but the first (step) dimension."""
    return x.flatten(1).pow(2).mean(1).sqrt()


class Solver(Protocol):
    done: bool

    def window(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def update(self, eps: torch.Tensor) -> None: ...


# How states that newly enter a sliding window start (`window_init`):
# - "paradigms": every new state, the window's last output included, as a copy of the last
#   state guessed so far (the end of the previous window: a computed state). This is
#   ParaDiGMS' rule (Shih et al. 2023; AndyShih12/paradigms, stablediffusion_paradigms.py:
#   `latents_time_evolution_buffer[end_idx:new_end_idx+1] = ...[end_idx]`), not the ParaTAA
#   release's (an earlier comment here called it both papers' choice: it is not).
# - "release": the released ParaTAA code's rule (TZW1998/ParaTAA-Diffusion, parallel_sd.py,
#   ParallelDDIM.initialize_samples with prepare_model_kwargs and step): only the window's
#   INPUTS are filled, up to min(final + window - 1, N), as copies of the last state it
#   counts as initialised; the window's last output keeps the buffer's zero until its first
#   update, and is not counted as initialised afterwards, so when the window slides its
#   computed value is overwritten by a copy of the state before it. One departure, on
#   purpose: the release also overwrites a FINALISED state that way when a whole window is
#   finalised in one iteration (with window = 1 every iteration, which turns its sequential
#   limit into a repeat of the previous state); here no state X[0..final] is ever overwritten,
#   so the copy starts from the finalised state instead.
ENTRY_RULES = ("paradigms", "release")
# Which history differences Triangular Anderson Acceleration uses for a step that entered
# the window after the oldest remembered iteration (`taa_history`; it matters only for
# memory m >= 3 and a window shorter than the trajectory): "newest" its most recent
# differences, all between iterations it took part in (the paper's description); "release"
# the released code's oldest rows of a zero-padded buffer (`_oldest_rows_zero_padded`).
HISTORY_RULES = ("newest", "release")


class _WindowedSolver:
    """What both solvers share: the state array, lazy initialisation, bookkeeping."""

    def __init__(self, trajectory: Trajectory, x_T: torch.Tensor, noise: torch.Tensor,
                 window: int, max_iterations: int, initial: torch.Tensor | None = None,
                 solve_from: int = 0, window_init: str = "paradigms"):
        n = trajectory.steps
        if window_init not in ENTRY_RULES:
            raise ValueError(f"window_init must be one of {ENTRY_RULES}, got {window_init!r}")
        if not 0 <= solve_from < n or (solve_from > 0 and initial is None):
            raise ValueError(f"solve_from must be in 0..{n - 1} and needs an initial trajectory "
                             f"(the states it keeps); got {solve_from}")
        device = x_T.device                   # every state and coefficient lives with x_T
        self.traj = trajectory.to(device)
        self.W = min(window, n)
        self.max_iterations = max_iterations
        self.window_init = window_init
        self.z = noise.to(device)
        self.X = torch.zeros(n + 1, *x_T.shape, dtype=torch.float64, device=device)
        self.X[0] = x_T.double()
        if initial is not None:               # warm start: a whole trajectory given up front
            self.X[1:] = initial[1:].to(device, torch.float64)
        self.initialized = n if initial is not None else 0  # X[..initialized] hold guesses
        # X[0..final] are solved (exact up to the tolerance); solve_from > 0 keeps the given
        # trajectory's states up to there (the release's variation, parallel_sd_winit.py)
        self.final = solve_from
        self.iterations = 0   # parallel network calls
        self.evaluations = 0  # network evaluations (rows of those calls)
        self.residual_trace: list[float] = []
        self.done = False

    def window(self) -> tuple[torch.Tensor, torch.Tensor]:
        """States and timesteps of the steps to evaluate: inputs X[final .. end-1]."""
        end = min(self.final + self.W, self.traj.steps)
        if self.window_init == "release":
            self._enter_as_released()
        elif self.initialized < end:
            # New states start as a copy of the last one guessed (ParaDiGMS' rule, above).
            self.X[self.initialized + 1:end + 1] = self.X[self.initialized]
            self.initialized = end
        self._steps = torch.arange(self.final, end, device=self.X.device)
        return self.X[self.final:end].float(), self.traj.timesteps[self._steps]

    def _enter_as_released(self) -> None:
        """The release's initialize_samples in our indexing (see ENTRY_RULES): fill the
        inputs up to min(final + W - 1, N) from the last state counted as initialised, never
        from before `final`, and leave the window's last output as it is."""
        top = min(self.traj.steps, self.final + self.W - 1)
        start = max(self.initialized, self.final)
        if start < top:
            self.X[start + 1:top + 1] = self.X[start]
            self.initialized = top

    def _drift(self, eps: torch.Tensor) -> torch.Tensor:
        """b_i eps_i + c_i z_i for the window's steps."""
        i = self._steps
        return _bcast(self.traj.b[i], eps) * eps.double() + _bcast(self.traj.c[i], eps) * self.z[i]

    def _advance(self, final: int, evaluated: int, residual: float) -> None:
        self.final = final
        self.iterations += 1
        self.evaluations += evaluated
        self.residual_trace.append(residual)
        self.done = self.final >= self.traj.steps or self.iterations >= self.max_iterations

    @property
    def converged(self) -> bool:
        return self.final >= self.traj.steps

    @property
    def sample(self) -> torch.Tensor:
        return self.X[-1].float()


def _bcast(coefficient: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return coefficient.view(-1, *([1] * (like.dim() - 1)))


# --------------------------------------------------------------------------------------
# ParaTAA
# --------------------------------------------------------------------------------------

class ParaTAASolver(_WindowedSolver):
    """ParaTAA on one trajectory (Tang et al. 2024, Algorithm 1 with TAA).

    Each iteration, for the window's outputs o = final+1 .. end:
    - first-order residual r_o = F_{o-1}(X[o-1]) - X[o] decides convergence: step o is
      done when RMS(r_o) <= tolerance or RMS(r_o) <= relative_tolerance * posterior std;
    - the k-th order residual R_o unrolls the affine recursion from X[max(o - k, final)]
      with the window's eps held fixed;
    - TAA: X_o <- X_o + R_o - (dX_o + dR_o) gamma_o, with gamma_o from the ridge-regularised
      least squares over the residual differences of steps final+1..o only (equally or
      more noisy steps: the "triangular" part), using up to m - 1 differences (which ones:
      `taa_history`);
    - the first unconverged output, computed from converged inputs, is final after the
      update; everything before it already was.
    """

    def __init__(self, trajectory, x_T, noise, *, window: int, order: int, memory: int,
                 tolerance: float, relative_tolerance: float, max_iterations: int,
                 ridge: float = 1e-3, initial=None, solve_from: int = 0,
                 window_init: str = "paradigms", taa_history: str = "newest"):
        super().__init__(trajectory, x_T, noise, window, max_iterations, initial, solve_from,
                         window_init)
        if taa_history not in HISTORY_RULES:
            raise ValueError(f"taa_history must be one of {HISTORY_RULES}, got {taa_history!r}")
        self.order, self.memory, self.ridge = order, memory, ridge
        self.taa_history = taa_history
        self.tolerance, self.relative_tolerance = tolerance, relative_tolerance
        # Per iteration: (first output index, X of the window's outputs, their R).
        self.history: deque[tuple[int, torch.Tensor, torch.Tensor]] = deque(maxlen=memory)

    def update(self, eps: torch.Tensor) -> None:
        traj, i = self.traj, self._steps
        lo, hi = int(i[0]) + 1, int(i[-1]) + 2        # outputs X[lo:hi]
        drift = self._drift(eps)
        current = self.X[lo:hi].clone()
        first_order = _bcast(traj.a[i], drift) * self.X[i] + drift - current
        size = rms(first_order)
        done = (size <= self.tolerance) | (size <= self.relative_tolerance * traj.posterior_std[i])
        pending = torch.nonzero(~done).flatten()
        first_pending = int(pending[0]) if len(pending) else len(i) - 1

        residual = self._higher_order_residual(drift) - current
        self.history.append((lo, current, residual))
        correction = self._anderson(residual, lo, first_pending + 1)
        self.X[lo:hi] = current + residual - correction
        self._advance(lo + first_pending, len(i), float(size.max()))

    def _higher_order_residual(self, drift: torch.Tensor) -> torch.Tensor:
        """X_o recomputed from X[max(o - k, final)] through the window's fixed eps."""
        a = self.traj.a[self._steps]
        n = len(a)
        # prods[p, o] = a_p * ... * a_{o-1}: the factor carrying state p to output o (p <= o).
        log_a = torch.cat([a.new_zeros(1), torch.cumsum(torch.log(a), 0)])
        prods = torch.exp(log_a[None, :] - log_a[:, None])       # (n+1, n+1), valid for p <= o
        outputs = torch.arange(1, n + 1, device=a.device)        # local output index o
        starts = torch.clamp(outputs - self.order, min=0)        # local input index s_o
        inputs = torch.arange(n, device=a.device)
        # weight of drift q in output o: a_{q+1} ... a_{o-1}, for s_o <= q <= o - 1
        used = (inputs[None, :] >= starts[:, None]) & (inputs[None, :] < outputs[:, None])
        weights = torch.where(used, prods[inputs + 1][:, outputs].T, a.new_zeros(()))
        base = prods[starts, outputs].view(-1, *([1] * (drift.dim() - 1))) * self.X[self._steps[0] + starts]
        return base + torch.einsum("oq,q...->o...", weights, drift)

    def _anderson(self, residual: torch.Tensor, lo: int, first_corrected: int) -> torch.Tensor:
        """(dX + dR) gamma for outputs at local index >= first_corrected, zero elsewhere.

        Differences are taken between consecutive iterations at the same step index. A step
        that entered the window j iterations ago has j - 1 of them; every earlier step has
        at least as many. Which ones it uses is `taa_history` (HISTORY_RULES): "newest" the
        j - 1 most recent, so the triangular sums never reach outside known history;
        "release" the OLDEST j - 1 rows of the zero-padded buffer, as the released code.
        """
        correction = torch.zeros_like(residual)
        if self.memory < 2 or len(self.history) < 2 or first_corrected >= len(residual):
            return correction
        n = len(residual)
        aligned = [(_on_window(lo, n, lo_k, x_k), _on_window(lo, n, lo_k, r_k))
                   for lo_k, x_k, r_k in self.history]
        if self.taa_history == "release":
            d_x, d_r, available = _oldest_rows_zero_padded(aligned)
        else:
            # Differences between consecutive iterations, newest first, on this window's steps;
            # `available[o]` counts the newest ones that exist for step o without a gap.
            d_x, d_r, available = [], [], torch.zeros(n, dtype=torch.long, device=residual.device)
            for (x_new, r_new), (x_old, r_old) in zip(aligned[:0:-1], aligned[-2::-1]):
                dx, dr = x_new - x_old, r_new - r_old
                valid = ~torch.isnan(dx.flatten(1)).any(1)
                available += valid & (available == len(d_x))
                d_x.append(torch.nan_to_num(dx))
                d_r.append(torch.nan_to_num(dr))
        d_x, d_r = torch.stack(d_x), torch.stack(d_r)               # (J, n, ...)
        flat_r = d_r.flatten(2)
        gram = torch.einsum("jod,kod->ojk", flat_r, flat_r).cumsum(0)  # sum over steps <= o
        rhs = torch.einsum("jod,od->oj", flat_r, residual.flatten(1)).cumsum(0)
        # Solve all outputs that use j differences at once (a batch of j x j systems).
        for j in range(1, d_x.shape[0] + 1):
            rows = torch.nonzero(available[first_corrected:] == j).flatten() + first_corrected
            if len(rows) == 0:
                continue
            system = gram[rows, :j, :j] + self.ridge * torch.eye(j, dtype=torch.float64, device=gram.device)
            gamma = torch.linalg.solve(system, rhs[rows, :j])                   # (rows, j)
            steps = (d_x[:j, rows] + d_r[:j, rows]).flatten(2)                  # (j, rows, D)
            correction[rows] = torch.einsum("rj,jrd->rd", gamma, steps).view_as(correction[rows])
        return correction


def _oldest_rows_zero_padded(aligned: list[tuple[torch.Tensor, torch.Tensor]]):
    """The release's history rows (parallel_sd.py, ParallelDDIM.taa_step): the buffer holds
    the last m iterations' (X, R) on every step, ZERO where a step was outside that
    iteration's window; its differences are ordered oldest first, and a step that has been
    in the window for j of the buffered iterations (`memory_indexes`) uses the first j - 1
    of them. For a step that entered after the buffer's oldest iteration these include
    differences against the zero padding."""
    present = torch.stack([~torch.isnan(x.flatten(1)).any(1) for x, _ in aligned])  # (L, n)
    available = (present.sum(0) - 1).clamp(min=0)
    padded = [(torch.nan_to_num(x), torch.nan_to_num(r)) for x, r in aligned]
    d_x = [new[0] - old[0] for old, new in zip(padded[:-1], padded[1:])]
    d_r = [new[1] - old[1] for old, new in zip(padded[:-1], padded[1:])]
    return d_x, d_r, available


def _on_window(lo: int, n: int, lo_k: int, values: torch.Tensor) -> torch.Tensor:
    """Stored values of outputs lo_k.. placed on outputs lo..lo+n-1 (NaN where absent)."""
    out = torch.full((n, *values.shape[1:]), math.nan, dtype=values.dtype, device=values.device)
    begin, end = max(lo, lo_k), min(lo + n, lo_k + len(values))
    if begin < end:
        out[begin - lo:end - lo] = values[begin - lo_k:end - lo_k]
    return out


# --------------------------------------------------------------------------------------
# Picard iteration (ParaDiGMS)
# --------------------------------------------------------------------------------------

class PicardSolver(_WindowedSolver):
    """ParaDiGMS' sliding-window Picard iteration on one trajectory (Shih et al. 2023, Alg. 1).

    X_new[final + j + 1] = X[final] + sum_{q <= j} (F_q(X[q]) - X[q]): every state of the
    window from its start at once. A state has converged when the change it made is within
    `tolerance` times the noise scale at that state (RMS, as ParaDiGMS's squared norm over
    tolerance^2 x variance x dimension); the window slides past the first that has not,
    by at most its size. The last state (x_0, zero noise scale) never counts as converged,
    as in ParaDiGMS: the run ends when the window's start passes it.
    """

    def __init__(self, trajectory, x_T, noise, *, window: int, tolerance: float,
                 max_iterations: int, initial=None):
        super().__init__(trajectory, x_T, noise, window, max_iterations, initial)
        self.tolerance = tolerance
        # Noise scale of each state 1..N: the DDPM std of the step that starts there.
        std = self.traj.posterior_std
        self.scale = torch.cat([std[1:], std.new_zeros(1)])

    def update(self, eps: torch.Tensor) -> None:
        traj, i = self.traj, self._steps
        lo, hi = int(i[0]) + 1, int(i[-1]) + 2
        drift = _bcast(traj.a[i] - 1, eps) * self.X[i] + self._drift(eps)
        new = self.X[lo - 1] + torch.cumsum(drift, 0)
        change = rms(new - self.X[lo:hi])
        pending = torch.nonzero(change > self.tolerance * self.scale[lo - 1:hi - 1]).flatten()
        stride = min(int(pending[0]) + 1 if len(pending) else len(i), self.W)
        self.X[lo:hi] = new
        self._advance(lo - 1 + stride, len(i), float(change.max()))


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------

@torch.no_grad()
def solve_in_lockstep(solvers: Sequence[Solver], denoiser: GuidedDenoiser, labels: torch.Tensor) -> int:
    """Iterate every unfinished solver together: all their windows go through the network
    as ONE batch per parallel iteration. Returns the number of network calls."""
    calls = 0
    while active := [k for k, s in enumerate(solvers) if not s.done]:
        windows = [solvers[k].window() for k in active]
        x = torch.cat([w[0] for w in windows])
        t = torch.cat([w[1] for w in windows])
        y = torch.cat([labels[k].expand(len(w[0])) for k, w in zip(active, windows)])
        out = denoiser(x, t, y)[:, : x.shape[1]]          # epsilon (drop learned variance)
        for k, eps in zip(active, out.split([len(w[0]) for w in windows])):
            solvers[k].update(eps)
        calls += 1
    return calls


def summarize(solvers: Sequence[_WindowedSolver]) -> tuple[torch.Tensor, dict, dict]:
    """Final samples, per-image diagnostics and per-image residual traces (NaN-padded)."""
    longest = max(len(s.residual_trace) for s in solvers)
    trace = np.full((len(solvers), longest), np.nan)
    for k, s in enumerate(solvers):
        trace[k, :len(s.residual_trace)] = s.residual_trace
    per_image = {
        "parallel_iterations": np.array([s.iterations for s in solvers], dtype=np.int64),
        "network_evaluations": np.array([s.evaluations for s in solvers], dtype=np.int64),
        "converged": np.array([s.converged for s in solvers], dtype=bool),
    }
    return torch.stack([s.sample for s in solvers]), per_image, {"residual": trace}


@torch.no_grad()
def sequential_trajectories(trajectory: Trajectory, denoiser: GuidedDenoiser, x_T: torch.Tensor,
                            labels: torch.Tensor, noises: torch.Tensor) -> torch.Tensor:
    """Every state X[0..N] of the sequential solution, (images, N + 1, ...) in float64:
    the warm start's and the variation's source trajectory (the paper reuses a previous
    prompt's)."""
    X = [x_T.double()]
    for i, t in enumerate(trajectory.timesteps.tolist()):
        eps = denoiser(X[-1].float(), t, labels)[:, : x_T.shape[1]].double()
        X.append(trajectory.a[i] * X[-1] + trajectory.b[i] * eps + trajectory.c[i] * noises[:, i])
    return torch.stack(X, dim=1)
