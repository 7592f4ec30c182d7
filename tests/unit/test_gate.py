"""The validation gate's decision (pure)."""

from lakeforge.config import Gate
from lakeforge.registry import CHALLENGER, CHAMPION, decide


def test_first_model_above_the_floor_becomes_champion():
    assert decide(0.71, None, Gate(min_auc=0.7)).alias == CHAMPION


def test_below_the_floor_is_challenger_even_without_champion():
    decision = decide(0.69, None, Gate(min_auc=0.7))
    assert (decision.alias, decision.reason) == (CHALLENGER, "holdout AUC 0.6900 below the floor 0.7000")


def test_needs_the_minimum_improvement_over_the_champion():
    gate = Gate(min_auc=0.5, min_improvement=0.01)
    assert decide(0.81, 0.80, gate).alias == CHAMPION
    weaker = decide(0.805, 0.80, gate)
    assert weaker.alias == CHALLENGER
    assert weaker.reason == "holdout AUC 0.8050 < champion's 0.8000 + 0.0100 on the same rows; champion kept"
