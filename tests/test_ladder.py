import itertools

import pytest

from budgetsearch import Ladder

GRID = [
    (1, 80, 3),
    (10, 1000, 4),
    (250, 6000, 3),
    (1, 81, 3),
    (1, 2, 2),
    (3, 100, 2),
    (7, 7 * 5**4, 5),
    (100, 101, 7),
]


@pytest.mark.parametrize("min_budget,max_budget,eta", GRID)
def test_rungs_strictly_increase(min_budget, max_budget, eta):
    budgets = Ladder(min_budget, max_budget, eta).budgets
    assert budgets[0] == min_budget
    assert budgets[-1] == max_budget
    assert all(a < b for a, b in zip(budgets, budgets[1:]))
    assert len(set(budgets)) == len(budgets)
    for k, budget in enumerate(budgets[:-1]):
        assert budget == min_budget * eta**k


def test_rungs_over_wide_grid():
    for min_budget, max_budget, eta in itertools.product([1, 2, 3, 5, 10], [11, 80, 81, 243, 1000, 6000], [2, 3, 4, 5]):
        budgets = Ladder(min_budget, max_budget, eta).budgets
        assert budgets[0] == min_budget
        assert budgets[-1] == max_budget
        assert all(a < b for a, b in zip(budgets, budgets[1:]))
        # Every rung but the top one is an exact power-of-eta multiple of min_budget.
        assert all(b == min_budget * eta**k for k, b in enumerate(budgets[:-1]))


def test_examples_from_docs():
    assert Ladder(1, 80, 3).budgets == (1, 3, 9, 27, 80)
    assert Ladder(10, 1000, 4).budgets == (10, 40, 160, 640, 1000)
    assert Ladder(1, 81, 3).budgets == (1, 3, 9, 27, 81)
    assert Ladder(250, 6000, 3).budgets == (250, 750, 2250, 6000)


def test_large_exact_powers_without_float_error():
    # 3**35 is where float logarithms start rounding the wrong way.
    assert Ladder(1, 3**35, 3).top_rung == 35
    assert Ladder(1, 3**35 + 1, 3).top_rung == 36


def test_rung_of_and_budget():
    ladder = Ladder(250, 6000, 3)
    assert ladder.rung_of(2250) == 2
    assert ladder.budget(3) == 6000
    with pytest.raises(ValueError, match="budget=1000"):
        ladder.rung_of(1000)
    with pytest.raises(ValueError, match="rung=4"):
        ladder.budget(4)


@pytest.mark.parametrize(
    "args,match",
    [
        ((10, 10, 3), "min_budget=10"),
        ((20, 10, 3), "min_budget=20"),
        ((0, 10, 3), "min_budget=0"),
        ((1, 10, 1), "reduction_factor=1"),
        ((1, 10, 2.5), "reduction_factor=2.5"),
        ((1.5, 10, 3), "min_budget=1.5"),
        ((1, -4, 3), "max_budget=-4"),
        ((True, 10, 3), "min_budget=True"),
    ],
)
def test_invalid_ladders(args, match):
    with pytest.raises(ValueError, match=match):
        Ladder(*args)
