"""The promotion rule, decided from claims alone."""

from collections import Counter

from budgetsearch import Ladder
from budgetsearch._jobs import (
    COMPLETE,
    FAILED,
    INTERRUPTED,
    LOST,
    PRUNED,
    RUNNING,
    Claim,
    ClaimIndex,
    bracket_sizes,
    next_job,
    rank,
)

LADDER = Ladder(1, 9, 3)  # budgets 1, 3, 9


def claim(number, state=COMPLETE, value=None, rung=0, config=None, attempt=0):
    return Claim(
        config=number if config is None else config,
        rung=rung,
        attempt=attempt,
        bracket=0,
        budget=LADDER.budgets[rung],
        reserved=LADDER.budgets[rung],
        trial_number=number,
        config_trial_id=number if config is None else config,
        state=state,
        value=value,
    )


def promotable(claims, rung, direction, eta):
    return ClaimIndex(direction, claims).promotable(0, rung, eta)


def test_rank_ties_break_by_trial_number():
    claims = [claim(3, value=1.0), claim(1, value=1.0), claim(2, value=0.5), claim(0, PRUNED)]
    assert [c.trial_number for c in rank(claims, "minimize")] == [2, 1, 3, 0]
    assert [c.trial_number for c in rank(claims, "maximize")] == [1, 3, 2, 0]


def test_pruned_ranks_below_every_result():
    # A pruned trial counts in the population but is never promoted, even when
    # every result is worse than what it reported before it was pruned.
    claims = [claim(0, PRUNED), claim(1, PRUNED), claim(2, value=100.0)]
    assert [c.trial_number for c in promotable(claims, 0, "minimize", 3)] == [2]
    claims = [claim(0, PRUNED), claim(1, PRUNED), claim(2, PRUNED)]
    assert promotable(claims, 0, "minimize", 3) == []


def test_population_counts_pruned_not_failed_or_running():
    claims = [claim(0, value=1.0), claim(1, value=2.0), claim(2, FAILED), claim(3, RUNNING), claim(4, LOST)]
    # Two finished trials: floor(2 / 3) = 0, so nothing moves up yet.
    assert promotable(claims, 0, "minimize", 3) == []
    claims.append(claim(5, PRUNED))
    assert [c.trial_number for c in promotable(claims, 0, "minimize", 3)] == [0]


def test_too_few_results_start_new_configuration():
    claims = [claim(0, value=1.0), claim(1, value=2.0)]
    job = next_job(claims, LADDER, "minimize")
    assert job.config is None
    assert job.rung == 0


def test_best_promotable_from_highest_rung_first():
    claims = [claim(n, value=float(n)) for n in range(9)]
    claims += [claim(10 + n, value=float(n), rung=1, config=n) for n in range(3)]
    job = next_job(claims, LADDER, "minimize")
    assert (job.config, job.rung, job.parent, job.budget) == (0, 2, 10, 9)


def test_promoted_configuration_not_promoted_twice():
    claims = [claim(n, value=float(n)) for n in range(6)]
    claims.append(claim(6, RUNNING, rung=1, config=0))
    job = next_job(claims, LADDER, "minimize")
    assert (job.config, job.rung) == (1, 1)
    claims.append(claim(7, RUNNING, rung=1, config=1))
    job = next_job(claims, LADDER, "minimize")
    assert job.config is None


def test_failed_promotion_is_final():
    claims = [claim(n, value=float(n)) for n in range(3)]
    claims.append(claim(3, FAILED, rung=1, config=0))
    job = next_job(claims, LADDER, "minimize")
    assert job.config is None


def test_job_that_does_not_fit_is_passed_over():
    claims = [claim(n, value=float(n)) for n in range(3)]
    # Reserved so far: 3; a promotion to rung 1 costs 3 and a new configuration 1.
    assert next_job(claims, LADDER, "minimize", total_budget=6).rung == 1
    job = next_job(claims, LADDER, "minimize", total_budget=5)
    assert (job.config, job.rung) == (None, 0)
    assert next_job(claims, LADDER, "minimize", total_budget=3) is None


def test_trial_limit_counts_every_job():
    claims = [claim(n, value=float(n)) for n in range(3)]
    assert next_job(claims, LADDER, "minimize", n_trials=3) is None
    assert next_job(claims, LADDER, "minimize", n_trials=4) is not None


def test_lost_job_runs_again_up_to_max_retries():
    claims = [claim(0, value=1.0), claim(1, value=2.0), claim(2, value=3.0), claim(3, LOST, rung=1, config=0)]
    job = next_job(claims, LADDER, "minimize", max_retries=1)
    assert (job.config, job.rung, job.attempt) == (0, 1, 1)
    claims.append(claim(4, LOST, rung=1, config=0, attempt=1))
    job = next_job(claims, LADDER, "minimize", max_retries=1)
    assert job.config is None


def test_interrupted_attempts_do_not_count():
    claims = [claim(0, value=1.0), claim(1, value=2.0), claim(2, value=3.0)]
    claims += [claim(3 + attempt, INTERRUPTED, rung=1, config=0, attempt=attempt) for attempt in range(3)]
    job = next_job(claims, LADDER, "minimize", max_retries=0)
    assert (job.config, job.rung, job.attempt) == (0, 1, 3)

    claims.append(claim(6, LOST, rung=1, config=0, attempt=3))
    job = next_job(claims, LADDER, "minimize", max_retries=1)
    assert (job.config, job.rung, job.attempt) == (0, 1, 4)
    job = next_job(claims, LADDER, "minimize", max_retries=0)
    assert job.config is None


def test_bracket_sizes_follow_hyperband():
    assert bracket_sizes(Ladder(1, 27, 3)) == [27, 12, 6, 4]
    assert bracket_sizes(Ladder(1, 81, 3)) == [81, 34, 15, 8, 5]
    assert bracket_sizes(Ladder(250, 6000, 3)) == [27, 12, 6, 4]
    assert bracket_sizes(Ladder(1, 2, 2)) == [2, 2]


def test_hyperband_spreads_new_configurations():
    ladder = Ladder(1, 27, 3)
    sizes = bracket_sizes(ladder)
    claims = []
    for number in range(490):
        job = next_job(claims, ladder, "minimize", algorithm="hyperband")
        assert job.config is None or job.rung > job.bracket
        # Every job fails, so nothing is promoted and each claim starts a configuration.
        claims.append(
            Claim(
                config=number, rung=job.rung, attempt=0, bracket=job.bracket, budget=job.budget,
                reserved=job.reserved, trial_number=number, config_trial_id=number, state=FAILED,
            )
        )
        assert job.rung == job.bracket
    counts = Counter(c.bracket for c in claims)
    for bracket, size in enumerate(sizes):
        expected = 490 * size / sum(sizes)
        assert abs(counts[bracket] - expected) <= 1


def test_hyperband_ranks_within_bracket():
    ladder = Ladder(1, 9, 3)
    claims = []
    # Bracket 0 at rung 1 has three results; bracket 1 has three results at rung 1 too, all better.
    for number, (bracket, value) in enumerate([(0, 5.0), (0, 6.0), (0, 7.0), (1, 1.0), (1, 2.0), (1, 3.0)]):
        claims.append(
            Claim(
                config=number, rung=1, attempt=0, bracket=bracket, budget=3, reserved=3,
                trial_number=number, config_trial_id=number, state=COMPLETE, value=value,
            )
        )
    first = next_job(claims, ladder, "minimize", algorithm="hyperband")
    assert (first.config, first.rung, first.bracket) == (3, 2, 1)
    claims.append(
        Claim(
            config=3, rung=2, attempt=0, bracket=1, budget=9, reserved=9,
            trial_number=6, config_trial_id=3, state=RUNNING,
        )
    )
    second = next_job(claims, ladder, "minimize", algorithm="hyperband")
    # Bracket 0's best moves up although bracket 1's second result is better.
    assert (second.config, second.rung, second.bracket) == (0, 2, 0)


def test_fixed_runs_every_configuration_at_top_budget():
    claims = [claim(n, value=float(n)) for n in range(9)]
    job = next_job(claims, LADDER, "minimize", algorithm="fixed")
    assert (job.config, job.rung, job.bracket, job.budget) == (None, 2, 2, 9)


def test_updated_index_matches_fresh_index():
    # A worker's index changes one claim at a time; every decision must equal the one
    # made from all claims at once.
    import random

    rng = random.Random(7)
    ladder = Ladder(1, 27, 3)
    kinds = Counter()
    for direction in ("minimize", "maximize"):
        current = {}
        index = ClaimIndex(direction)
        for number in range(400):
            # Change a running or lost claim, or add one.
            open_ids = [key for key, c in current.items() if c.state in (RUNNING, LOST, INTERRUPTED)]
            if open_ids and rng.random() < 0.5:
                key = rng.choice(open_ids)
                old = current[key]
                state = rng.choice([COMPLETE, COMPLETE, PRUNED, FAILED, LOST, INTERRUPTED])
                value = rng.choice([0.1, 0.5, 0.9, rng.random()]) if state == COMPLETE else None
                new = Claim(**{**old.__dict__, "state": state, "value": value})
                index.remove(old)
                index.add(new)
                current[key] = new
            else:
                algorithm = rng.choice(["asha", "hyperband"])
                job = index.next_job(ladder, algorithm=algorithm, max_retries=1)
                if job.attempt:
                    kinds["retry"] += 1
                elif job.config is None:
                    kinds["new"] += 1
                else:
                    kinds["promotion"] += 1
                config = number if job.config is None else job.config
                new = Claim(
                    config=config, rung=job.rung, attempt=job.attempt, bracket=job.bracket, budget=job.budget,
                    reserved=job.reserved, trial_number=number, config_trial_id=config, state=RUNNING,
                )
                index.add(new)
                current[number] = new
            fresh = ClaimIndex(direction, current.values())
            assert index.reserved == fresh.reserved
            assert index.complete_per_rung() == fresh.complete_per_rung()
            for algorithm in ("asha", "hyperband"):
                for total_budget in (None, fresh.reserved + 3, fresh.reserved + 9):
                    options = dict(algorithm=algorithm, total_budget=total_budget, max_retries=1, n_trials=300)
                    assert index.next_job(ladder, **options) == fresh.next_job(ladder, **options)
    # The sequence exercised every kind of job.
    assert min(kinds["new"], kinds["promotion"], kinds["retry"]) >= 10, kinds
