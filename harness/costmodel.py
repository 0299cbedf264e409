"""The cost model of speculative decoding: measured costs of one run (Costs), the expected tokens
per verify block, the draft length that maximizes tokens per ms (choose_gamma, the adaptive
policy's rule), and the end-to-end time of a perfect parallel-prefill engine with those costs
(ideal_e2e_ms, the denominator of the engine's efficiency). Pure functions of measured numbers:
no model, no clock."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable, Sequence

MAX_GAMMA = 8


@dataclass
class Costs:
    draft_ms: list = field(default_factory=list)     # one drafter forward of 1-2 tokens
    hidden_ms: list = field(default_factory=list)    # one queued hidden step (CUDA: GPU time)
    verify_ms: dict = field(default_factory=dict)    # k tokens -> [ms], host round trips; k == 1 is a plain decode
    plain_ms: list = field(default_factory=list)     # one queued plain decode step (CUDA: GPU time)

    def add_verify(self, k: int, ms: float) -> None:
        self.verify_ms.setdefault(int(k), []).append(ms)

    def draft(self) -> float | None:
        return statistics.fmean(self.draft_ms) if self.draft_ms else None

    def hidden(self) -> float | None:
        """Cost of a hidden draft step: queued steps where measured, else a synchronous draft step."""
        return statistics.fmean(self.hidden_ms) if self.hidden_ms else self.draft()

    def plain(self) -> float | None:
        """Cost of a plain decode step: queued steps where measured, else a round-trip one (verify of 1)."""
        if self.plain_ms:
            return statistics.fmean(self.plain_ms)
        return self.verify(1) if 1 in self.verify_ms else None

    def verify(self, k: int) -> float | None:
        """Mean measured cost of a k-token target forward; unmeasured k from a least-squares line."""
        if k in self.verify_ms:
            return statistics.fmean(self.verify_ms[k])
        points = [(kk, statistics.fmean(v)) for kk, v in self.verify_ms.items()]
        if not points:
            return None
        if len(points) == 1:
            return points[0][1]          # optimistic (memory-bound): a bigger block costs the same
        slope, intercept = statistics.linear_regression(*zip(*points))
        return max(intercept + slope * k, min(p[1] for p in points))


def expected_tokens(alpha: float, gamma: int) -> float:
    """E[tokens per verify] for i.i.d. per-token acceptance alpha and draft length gamma."""
    if alpha >= 1.0:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def choose_gamma(alpha: float, draft_ms: float, verify_ms: Callable[[int], float], decode_ms: float,
                 *, max_gamma: int = MAX_GAMMA, min_gain: float = 0.02) -> int:
    """Draft length maximizing tokens per ms; 0 (plain decoding) unless speculation beats plain
    decoding's 1/decode_ms by more than `min_gain`, so a bad drafter costs at most a few probes."""
    best, best_rate = 0, 1.0 / decode_ms
    for g in range(1, max_gamma + 1):
        rate = expected_tokens(alpha, g) / (g * draft_ms + verify_ms(g + 1))
        if rate > best_rate * (1.0 + min_gain) and rate > best_rate:
            best, best_rate = g, rate
    return best


def ideal_e2e_ms(*, drafter_ready_ms: float, target_ready_ms: float, draft_ms: float,
                 verify_ms: Callable[[int], float], decode_ms: float,
                 accept_per_position: Sequence[Sequence[int]], n_tokens: int, gamma: int,
                 hidden_cap: int = 64, draft_until_ms: float | None = None,
                 hidden_step_ms: float | None = None) -> float:
    """E2E of a perfect parallel-prefill engine with these measured costs (no overhead, no contention).

    r_j = accepted_j / drafted_j, the measured probability that draft position j is accepted
    (0 beyond the measured positions). D = drafter ready, T = target ready, c_d = draft step,
    c_v(k) = k-token verify, c_1 = plain decode, N = tokens, U = when hidden drafting must stop
    (draft_until_ms: T, or the end of the target's host stages under the yield-gpu policy):
      hidden tokens  n_h = min(hidden_cap, N, 1 + floor(max(0, U - D) / c_h)), c_h = a hidden step
                     (queued back to back on CUDA: hidden_step_ms; default c_d)
      hidden block   yields  E_h = 1 + sum_{j<n_h} r_j  tokens, costing  r_0 * c_v(n_h)  after T
      rest           R = max(0, N - E_h) tokens: gamma = 0 -> R * c_1;
                     else R / (1 + sum_{j<gamma} r_j) blocks of  gamma * c_d + c_v(gamma + 1)
      ideal = T + r_0 * c_v(n_h) + rest."""
    r = [a / d if d else 0.0 for a, d in accept_per_position]
    rate = lambda j: r[j] if j < len(r) else 0.0
    until = target_ready_ms if draft_until_ms is None else min(draft_until_ms, target_ready_ms)
    window = max(0.0, until - drafter_ready_ms)
    # No measured draft step means only d1 (from the drafter's prefill logits) was drafted.
    step = draft_ms if hidden_step_ms is None else hidden_step_ms
    n_h = int(min(hidden_cap, n_tokens, 1 + window // step)) if step > 0 else 1
    tokens_h = 1 + sum(rate(j) for j in range(n_h))
    hidden_cost = rate(0) * verify_ms(n_h) if rate(0) else 0.0    # d1 rejected: no forward to verify
    rest = max(0.0, n_tokens - tokens_h)
    if gamma == 0:
        rest_cost = rest * decode_ms
    else:
        per_block = 1 + sum(rate(j) for j in range(gamma))
        rest_cost = rest / per_block * (gamma * draft_ms + verify_ms(gamma + 1))
    return target_ready_ms + hidden_cost + rest_cost

