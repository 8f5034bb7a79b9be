"""Successive-halving ladder arithmetic, with integers only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


def _require_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} is invalid: it must be a positive integer.")
    if value <= 0:
        raise ValueError(f"{name}={value!r} is invalid: it must be a positive integer.")
    return value


@dataclass(frozen=True)
class Ladder:
    """The rung budgets of a successive-halving ladder.

    Rung k has budget ``min_budget * reduction_factor**k`` while that is below
    ``max_budget``, and the top rung is exactly ``max_budget``. Budgets are in the
    study's budget unit (optimizer steps by default).

    Args:
        min_budget: Budget of rung 0, a positive integer.
        max_budget: Budget of the top rung, an integer above ``min_budget``.
        reduction_factor: The integer eta (at least 2): about one configuration in
            eta moves up each rung.

    Example:
        >>> Ladder(250, 6000, 3).budgets
        (250, 750, 2250, 6000)
        >>> Ladder(1, 80, 3).budgets
        (1, 3, 9, 27, 80)
    """

    min_budget: int
    max_budget: int
    reduction_factor: int

    def __post_init__(self) -> None:
        _require_positive_int("min_budget", self.min_budget)
        _require_positive_int("max_budget", self.max_budget)
        if self.min_budget >= self.max_budget:
            raise ValueError(
                f"min_budget={self.min_budget} is invalid: it must be below "
                f"max_budget={self.max_budget}."
            )
        eta = self.reduction_factor
        if isinstance(eta, bool) or not isinstance(eta, int) or eta < 2:
            raise ValueError(
                f"reduction_factor={eta!r} is invalid: it must be an integer of at least 2."
            )

    @property
    def budgets(self) -> Tuple[int, ...]:
        """The budget of each rung, from rung 0 to the top rung."""
        budgets = []
        budget = self.min_budget
        while budget < self.max_budget:
            budgets.append(budget)
            budget *= self.reduction_factor
        budgets.append(self.max_budget)
        return tuple(budgets)

    @property
    def top_rung(self) -> int:
        """The number K of the top rung (the ladder has K + 1 rungs)."""
        return len(self.budgets) - 1

    def budget(self, rung: int) -> int:
        """Return the budget of ``rung``."""
        budgets = self.budgets
        if not 0 <= rung < len(budgets):
            raise ValueError(f"rung={rung} is invalid: this ladder has rungs 0 to {len(budgets) - 1}.")
        return budgets[rung]

    def rung_of(self, budget: int) -> int:
        """Return the rung whose budget is exactly ``budget``."""
        try:
            return self.budgets.index(budget)
        except ValueError:
            raise ValueError(
                f"budget={budget!r} is not a rung budget of this ladder {self.budgets}."
            ) from None
