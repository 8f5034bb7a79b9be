"""The promotion rule: which job a worker claims next, decided from the claims of a study.

Everything here is pure: it takes the rows of the claims table and returns a decision,
so every process that reads the same rows reaches the same decision. A worker keeps a
:class:`ClaimIndex` of the study's finished claims between decisions and adds only the
rows that changed since, so a decision costs the same at 100 and at 100,000 trials.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from budgetsearch._ladder import Ladder

# Claim states. A claim is RUNNING until its trial ends. LOST marks a trial whose worker died
# or stopped heartbeating, and INTERRUPTED a trial stopped by its worker's SIGINT or SIGTERM.
# Both release the job to the next attempt. Only LOST attempts count against max_retries, so
# a job that preemptions keep stopping still runs again.
RUNNING = "running"
COMPLETE = "complete"
PRUNED = "pruned"
FAILED = "failed"
LOST = "lost"
INTERRUPTED = "interrupted"
RELEASED = (LOST, INTERRUPTED)


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


def _rank_key(claim: Claim, sign: float) -> Tuple[float, int, int, int, int]:
    # Unique per claim: (config, rung, attempt) is unique in the claims table.
    assert claim.value is not None
    return (sign * claim.value, claim.trial_number, claim.config, claim.rung, claim.attempt)


def _sign(direction: str) -> float:
    return -1.0 if direction == "maximize" else 1.0


def rank(claims: Iterable[Claim], direction: str) -> List[Claim]:
    """Rank the finished claims of one rung: results best first, then pruned trials.

    Ties break by value, then by the lower trial number. A pruned trial has no
    result and ranks below every result, in trial-number order.
    """
    sign = _sign(direction)
    complete = sorted((c for c in claims if c.state == COMPLETE), key=lambda c: _rank_key(c, sign))
    pruned = sorted((c for c in claims if c.state == PRUNED), key=lambda c: c.trial_number)
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


def brackets_by_deficit(started: Sequence[int], sizes: Sequence[int]) -> List[int]:
    """Order the brackets for the next new configuration: the one furthest below its share first.

    ``started[b]`` is the number of configurations bracket b has claimed. Bracket b's
    share of the C + 1 configurations, counting the next one, is
    ``(C + 1) * sizes[b] / sum(sizes)``. The deficit is that share minus ``started[b]``,
    compared with integers and with ties going to the lower bracket, so every process
    orders the brackets the same way.
    """
    total = sum(started) + 1
    weight = sum(sizes)
    return sorted(range(len(sizes)), key=lambda b: (started[b] * weight - total * sizes[b], b))


class ClaimIndex:
    """The claims of one study, kept in the structures a decision needs.

    Claims are added and removed one at a time, each in time that does not depend on
    the number of claims (apart from keeping each rung's ranking sorted), so a worker
    can keep the finished claims between decisions and add the running ones just for
    one decision. :meth:`next_job` then reads only the rankings' heads.
    """

    def __init__(self, direction: str, claims: Iterable[Claim] = ()) -> None:  # noqa: D107
        self.direction = direction
        self._sign = _sign(direction)
        self.reserved = 0
        self._jobs: Counter = Counter()  # (config, rung) -> claims
        self._started: Counter = Counter()  # bracket -> configurations claimed there
        self._configs: Dict[Tuple[int, int], Counter] = {}  # (bracket, rung) -> config -> claims
        self._ranked: Dict[Tuple[int, int], List[tuple]] = {}  # (bracket, rung) -> sorted rank keys
        self._by_key: Dict[tuple, Claim] = {}
        # The rank keys of each (bracket, rung) whose configuration has no claim one rung
        # up, sorted; and each configuration's complete rank keys there.
        self._open: Dict[Tuple[int, int], List[tuple]] = {}
        self._complete_keys: Dict[Tuple[int, int, int], Set[tuple]] = {}
        self._pruned: Counter = Counter()  # (bracket, rung) -> pruned claims
        self._complete_per_rung: Counter = Counter()
        self._attempts: Dict[Tuple[int, int], Dict[int, Claim]] = {}
        self._lost_jobs: Set[Tuple[int, int]] = set()
        for claim in claims:
            self.add(claim)

    def add(self, claim: Claim) -> None:
        """Add one claim."""
        self._count(claim, 1)
        attempts = self._attempts.setdefault((claim.config, claim.rung), {})
        if claim.attempt in attempts:
            raise ValueError(f"claim {claim} duplicates attempt {claim.attempt} of its job.")
        attempts[claim.attempt] = claim
        if claim.state in RELEASED:
            self._lost_jobs.add((claim.config, claim.rung))
        cell = (claim.bracket, claim.rung)
        if claim.state == COMPLETE:
            key = _rank_key(claim, self._sign)
            bisect.insort(self._ranked.setdefault(cell, []), key)
            self._by_key[key] = claim
            self._complete_keys.setdefault((claim.bracket, claim.rung, claim.config), set()).add(key)
            if claim.config not in self._configs.get((claim.bracket, claim.rung + 1), {}):
                bisect.insort(self._open.setdefault(cell, []), key)
            self._complete_per_rung[claim.rung] += 1
        elif claim.state == PRUNED:
            self._pruned[cell] += 1

    def remove(self, claim: Claim) -> None:
        """Remove a claim that was added before, for instance to add its newer state."""
        self._count(claim, -1)
        job = (claim.config, claim.rung)
        attempts = self._attempts[job]
        del attempts[claim.attempt]
        if not attempts:
            del self._attempts[job]
        if claim.state in RELEASED and not any(c.state in RELEASED for c in attempts.values()):
            self._lost_jobs.discard(job)
        cell = (claim.bracket, claim.rung)
        if claim.state == COMPLETE:
            key = _rank_key(claim, self._sign)
            ranked = self._ranked[cell]
            del ranked[bisect.bisect_left(ranked, key)]
            del self._by_key[key]
            self._complete_keys[(claim.bracket, claim.rung, claim.config)].discard(key)
            _discard_sorted(self._open.get(cell, []), key)
            self._complete_per_rung[claim.rung] -= 1
        elif claim.state == PRUNED:
            self._pruned[cell] -= 1

    def _count(self, claim: Claim, change: int) -> None:
        self.reserved += change * claim.reserved
        job = (claim.config, claim.rung)
        self._jobs[job] += change
        if not self._jobs[job]:
            del self._jobs[job]
        if claim.rung == claim.bracket and claim.attempt == 0:
            self._started[claim.bracket] += change
        configs = self._configs.setdefault((claim.bracket, claim.rung), Counter())
        configs[claim.config] += change
        if not configs[claim.config]:
            del configs[claim.config]
        # The configuration's first claim at this rung closes its results one rung down
        # to promotion, and removing its last claim here opens them again.
        below = (claim.bracket, claim.rung - 1)
        keys = self._complete_keys.get((claim.bracket, claim.rung - 1, claim.config), ())
        if change > 0 and configs[claim.config] == 1:
            for key in keys:
                _discard_sorted(self._open.get(below, []), key)
        elif change < 0 and claim.config not in configs:
            for key in keys:
                bisect.insort(self._open.setdefault(below, []), key)

    def complete_per_rung(self) -> Dict[int, int]:
        """Return the number of complete results at each rung that has any."""
        return {rung: count for rung, count in self._complete_per_rung.items() if count}

    def some_complete(self) -> Optional[Claim]:
        """Return one claim with a complete result, or ``None``."""
        return next(iter(self._by_key.values()), None)

    def promotable(self, bracket: int, rung: int, eta: int, first: bool = False) -> List[Claim]:
        """Return the claims of ``bracket`` at ``rung`` whose configuration may move up, best first.

        With n finished trials (complete or pruned) there, a configuration is
        promotable when it is among the best ``n // eta`` results and no trial has
        claimed it at ``rung + 1``. Pruned trials rank below every result. With fewer
        than ``eta`` finished trials nothing is promotable yet, and workers start new
        configurations instead of waiting. With ``first``, stop at the best one.
        """
        cell = (bracket, rung)
        ranked = self._ranked.get(cell, [])
        places = (len(ranked) + self._pruned[cell]) // eta
        found = []
        for key in self._open.get(cell, []):
            if bisect.bisect_left(ranked, key) >= places:
                break  # Every later key ranks lower still.
            found.append(self._by_key[key])
            if first:
                break
        return found

    def _retry_job(self, max_retries: int) -> Optional[Job]:
        """Return the job of the highest rung whose last attempt was lost, if it may run again."""
        lost = []
        for job in self._lost_jobs:
            attempts = self._attempts[job]
            latest = attempts[max(attempts)]
            retries = sum(1 for claim in attempts.values() if claim.state == LOST)
            if latest.state in RELEASED and retries <= max_retries:
                lost.append(latest)
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

    def next_job(
        self,
        ladder: Ladder,
        *,
        algorithm: str = "asha",
        total_budget: Optional[int] = None,
        n_trials: Optional[int] = None,
        max_retries: int = 0,
        trunk: Optional[Callable[[int], int]] = None,
    ) -> Optional[Job]:
        """Decide the next job, or ``None`` when no job fits the study's limits; see :func:`next_job`."""
        remaining = None if total_budget is None else total_budget - self.reserved

        def fits(reserved: int) -> bool:
            return remaining is None or reserved <= remaining

        retry = self._retry_job(max_retries)
        if retry is not None and fits(retry.reserved):
            return retry
        # A job is a (configuration, rung); its retries do not count as more jobs.
        if n_trials is not None and len(self._jobs) >= n_trials:
            return None

        budgets = ladder.budgets
        eta = ladder.reduction_factor
        top = ladder.top_rung
        if algorithm == "fixed":
            new_brackets = [top]
        elif algorithm == "hyperband":
            sizes = bracket_sizes(ladder)
            new_brackets = brackets_by_deficit([self._started[b] for b in range(len(sizes))], sizes)
        else:
            new_brackets = [0]

        # In "fixed" every configuration starts at the top rung, so nothing moves up.
        promotion_rungs = [] if algorithm == "fixed" else range(top - 1, -1, -1)
        for rung in promotion_rungs:
            budget = budgets[rung + 1]
            start_step = 0 if trunk is None else trunk(budgets[rung])
            if not fits(budget - start_step):
                continue
            candidates = []
            for bracket in range(rung + 1):
                candidates += self.promotable(bracket, rung, eta, first=True)
            if not candidates:
                continue
            best = min(candidates, key=lambda c: _rank_key(c, self._sign))
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


def _discard_sorted(keys: List[tuple], key: tuple) -> None:
    """Remove ``key`` from the sorted list ``keys`` if it is there."""
    position = bisect.bisect_left(keys, key)
    if position < len(keys) and keys[position] == key:
        del keys[position]


def next_job(
    claims: Iterable[Claim],
    ladder: Ladder,
    direction: str,
    *,
    algorithm: str = "asha",
    total_budget: Optional[int] = None,
    n_trials: Optional[int] = None,
    max_retries: int = 0,
    trunk: Optional[Callable[[int], int]] = None,
) -> Optional[Job]:
    """Decide the next job from all the claims of a study, or ``None`` when no job fits its limits.

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
    return ClaimIndex(direction, claims).next_job(
        ladder,
        algorithm=algorithm,
        total_budget=total_budget,
        n_trials=n_trials,
        max_retries=max_retries,
        trunk=trunk,
    )
