"""The promotion rule: which job a worker claims next, decided from the claims of a study.

Everything here is pure: it takes the rows of the claims table and returns a decision,
so every process that reads the same rows reaches the same decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from budgetsearch._ladder import Ladder

# Claim states. A claim is RUNNING until its trial ends; LOST marks a trial whose
# worker stopped before it ended, which releases the job to the next attempt.
RUNNING = "running"
COMPLETE = "complete"
PRUNED = "pruned"
FAILED = "failed"
LOST = "lost"


@dataclass(frozen=True)
class Claim:
    """One row of the claims table, as the decision needs it."""

    config: int
    rung: int
    attempt: int
    bracket: int
    budget: int
    reserved: int
    trial_number: int
    config_trial_id: int
    state: str
    value: Optional[float] = None
    parent: Optional[int] = None
    start_step: int = 0


@dataclass(frozen=True)
class Job:
    """A job to claim: one configuration at one rung, with its budget and reservation.

    ``config`` is ``None`` for a new configuration, whose id becomes the number of the
    trial that claims it. ``start_step`` is where training starts: 0, or in resume
    mode the parent's trunk step, and ``reserved`` is ``budget - start_step``.
    """

    config: Optional[int]
    rung: int
    attempt: int
    bracket: int
    budget: int
    reserved: int
    parent: Optional[int] = None
    config_trial_id: Optional[int] = None
    start_step: int = 0


def rank(claims: Iterable[Claim], direction: str) -> List[Claim]:
    """Rank the finished claims of one rung: results best first, then pruned trials.

    Ties break by value, then by the lower trial number. A pruned trial has no
    result and ranks below every result, in trial-number order.
    """
    complete = [c for c in claims if c.state == COMPLETE]
    pruned = [c for c in claims if c.state == PRUNED]
    sign = -1.0 if direction == "maximize" else 1.0
    complete.sort(key=lambda c: (sign * c.value, c.trial_number))
    pruned.sort(key=lambda c: c.trial_number)
    return complete + pruned


def bracket_sizes(ladder: Ladder) -> List[int]:
    """Return the number of configurations Hyperband's schedule starts in each bracket.

    Bracket b starts at rung b, so its configurations can move up K - b times. As in
    Hyperband (Li et al., JMLR 2018), it starts ``ceil((K + 1) / (K - b + 1) * eta**(K - b))``
    configurations, computed here with integers.

    Example:
        >>> bracket_sizes(Ladder(1, 27, 3))
        [27, 12, 6, 4]
    """
    top = ladder.top_rung
    eta = ladder.reduction_factor
    sizes = []
    for bracket in range(top + 1):
        halvings = top - bracket
        numerator = (top + 1) * eta**halvings
        sizes.append((numerator + halvings) // (halvings + 1))
    return sizes


def brackets_by_deficit(claims: Sequence[Claim], sizes: Sequence[int]) -> List[int]:
    """Order the brackets for the next new configuration: the one furthest below its share first.

    Bracket b's share of the C + 1 configurations, counting the next one, is
    ``(C + 1) * sizes[b] / sum(sizes)``. The deficit is that share minus the
    configurations the bracket has claimed, compared with integers and with ties going to
    the lower bracket, so every process orders the brackets the same way.
    """
    started = [0] * len(sizes)
    for claim in claims:
        if claim.rung == claim.bracket and claim.attempt == 0:
            started[claim.bracket] += 1
    total = sum(started) + 1
    weight = sum(sizes)
    return sorted(range(len(sizes)), key=lambda b: (started[b] * weight - total * sizes[b], b))


def promotable(claims: Sequence[Claim], rung: int, direction: str, eta: int) -> List[Claim]:
    """Return the claims at ``rung`` whose configuration may move up, best first.

    With n finished trials (complete or pruned) at the rung, a configuration is
    promotable when it is among the best ``n // eta`` results there and no trial has
    claimed it at ``rung + 1``. With fewer than ``eta`` finished trials nothing is
    promotable yet, and workers start new configurations instead of waiting.
    """
    at_rung = [c for c in claims if c.rung == rung and c.state in (COMPLETE, PRUNED)]
    top = rank(at_rung, direction)[: len(at_rung) // eta]
    claimed_above = {c.config for c in claims if c.rung == rung + 1}
    return [c for c in top if c.state == COMPLETE and c.config not in claimed_above]


def _retry_job(claims: Sequence[Claim], ladder: Ladder, max_retries: int) -> Optional[Job]:
    """Return the job of the highest rung whose last attempt was lost, if it may run again."""
    latest: Dict[Tuple[int, int], Claim] = {}
    for claim in claims:
        key = (claim.config, claim.rung)
        if key not in latest or claim.attempt > latest[key].attempt:
            latest[key] = claim
    lost = [c for c in latest.values() if c.state == LOST and c.attempt < max_retries]
    if not lost:
        return None
    claim = max(lost, key=lambda c: (c.rung, -c.trial_number))
    return Job(
        config=claim.config,
        rung=claim.rung,
        attempt=claim.attempt + 1,
        bracket=claim.bracket,
        budget=claim.budget,
        reserved=claim.budget - claim.start_step,
        parent=claim.parent,
        config_trial_id=claim.config_trial_id,
        start_step=claim.start_step,
    )


def reserved_total(claims: Iterable[Claim]) -> int:
    return sum(c.reserved for c in claims)


def next_job(
    claims: Sequence[Claim],
    ladder: Ladder,
    direction: str,
    *,
    algorithm: str = "asha",
    total_budget: Optional[int] = None,
    n_trials: Optional[int] = None,
    max_retries: int = 0,
    trunk: Optional[Callable[[int], int]] = None,
) -> Optional[Job]:
    """Decide the next job, or ``None`` when no job fits the study's limits.

    The order is: a lost job's next attempt, then the best promotable configuration
    from the rung below the top down to rung 0, then a new configuration at the base
    rung of a bracket. Rankings and promotions stay within a bracket. Each candidate
    must fit the budget left under ``total_budget``, and a candidate that does not fit
    is passed over for the next, smaller one.

    ``algorithm`` is ``"asha"`` (one bracket, starting at rung 0), ``"hyperband"``
    (brackets 0 to K, new configurations spread by :func:`brackets_by_deficit`) or
    ``"fixed"`` (every configuration in bracket K, at the top budget, never promoted).

    ``trunk`` maps a budget to its trunk step in resume mode: a promoted trial then
    starts at its parent's trunk step and reserves only the rest of its budget.
    """
    remaining = None if total_budget is None else total_budget - reserved_total(claims)

    def fits(reserved: int) -> bool:
        return remaining is None or reserved <= remaining

    retry = _retry_job(claims, ladder, max_retries)
    if retry is not None and fits(retry.reserved):
        return retry
    # A job is a (configuration, rung); its retries do not count as more jobs.
    if n_trials is not None and len({(c.config, c.rung) for c in claims}) >= n_trials:
        return None

    budgets = ladder.budgets
    eta = ladder.reduction_factor
    top = ladder.top_rung
    if algorithm == "fixed":
        new_brackets = [top]
    elif algorithm == "hyperband":
        new_brackets = brackets_by_deficit(claims, bracket_sizes(ladder))
    else:
        new_brackets = [0]

    by_bracket: Dict[int, List[Claim]] = {}
    for claim in claims:
        by_bracket.setdefault(claim.bracket, []).append(claim)
    # In "fixed" every configuration starts at the top rung, so nothing moves up.
    promotion_rungs = [] if algorithm == "fixed" else range(top - 1, -1, -1)
    for rung in promotion_rungs:
        budget = budgets[rung + 1]
        start_step = 0 if trunk is None else trunk(budgets[rung])
        if not fits(budget - start_step):
            continue
        candidates = []
        for bracket in sorted(by_bracket):
            if bracket <= rung:
                candidates += promotable(by_bracket[bracket], rung, direction, eta)[:1]
        if not candidates:
            continue
        best = rank(candidates, direction)[0]
        return Job(
            config=best.config,
            rung=rung + 1,
            attempt=0,
            bracket=best.bracket,
            budget=budget,
            reserved=budget - start_step,
            parent=best.trial_number,
            config_trial_id=best.config_trial_id,
            start_step=start_step,
        )

    # The bracket furthest below its share comes first. When its base budget does not
    # fit, the next bracket that fits takes the configuration, so a study spends
    # its last budget on smaller jobs before it stops.
    for bracket in new_brackets:
        if fits(budgets[bracket]):
            return Job(
                config=None,
                rung=bracket,
                attempt=0,
                bracket=bracket,
                budget=budgets[bracket],
                reserved=budgets[bracket],
            )
    return None
