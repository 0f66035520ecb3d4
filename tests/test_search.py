"""Tests for dvt_runtime.search (threshold search for early-exit DVTs). Fast: numpy only."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvt_runtime.search import (
    ALGORITHMS,
    Evaluation,
    ExitOutputs,
    StageCosts,
    budget_curve,
    evaluate_thresholds,
    exit_indices,
    frontier_table,
    pareto_frontier,
    search_thresholds,
    sweep_thresholds,
    thresholds_from_list,
)

# ---------------------------------------------------------------------------- helpers


def synth_probs(n_exits: int, n: int, seed: int, n_classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Seeded synthetic softmax outputs (E, N, C) where later exits are more accurate."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(n_classes, size=n)
    probs = []
    for e in range(n_exits):
        logits = rng.normal(size=(n, n_classes))
        logits[np.arange(n), labels] += 0.5 + 0.8 * e
        p = np.exp(logits)
        probs.append(p / p.sum(axis=1, keepdims=True))
    return np.stack(probs), labels


def synth_outputs(n_exits: int, n: int, seed: int, round_to: int | None = None) -> ExitOutputs:
    probs, labels = synth_probs(n_exits, n, seed)
    out = ExitOutputs.from_probs(probs, labels)
    if round_to is not None:  # coarse confidences -> many ties
        out = ExitOutputs.from_predictions(np.round(out.confidences, round_to), out.predictions, labels)
    return out


def synth_costs(n_exits: int, seed: int) -> StageCosts:
    rng = np.random.default_rng(1000 + seed)
    return StageCosts.from_samples([rng.gamma(4.0, 1.0 + e, size=300) + 1.0 for e in range(n_exits)])


def brute_force(out: ExitOutputs, cumulative: np.ndarray, budget: float):
    """Independent enumeration of every threshold combination (observed confidences + inf).

    Returns (best accuracy %, per-combination accuracies %, mean costs, thresholds).
    """
    conf, correct = out.confidences, out.correct
    n_exits, n = conf.shape
    cands = [np.append(np.unique(conf[e]), np.inf) for e in range(n_exits - 1)]
    thr = np.array(list(itertools.product(*cands))).reshape(-1, n_exits - 1)
    accs, costs = [], []
    for s in range(0, len(thr), 4000):
        t = thr[s : s + 4000]
        ex = np.full((len(t), n), n_exits - 1)
        undecided = np.ones((len(t), n), dtype=bool)
        for e in range(n_exits - 1):
            stop = undecided & (conf[e][None, :] >= t[:, e : e + 1])
            ex[stop] = e
            undecided &= ~stop
        accs.append(100.0 * correct[ex, np.arange(n)].sum(axis=1) / n)
        costs.append(cumulative[ex].mean(axis=1))
    acc, cost = np.concatenate(accs), np.concatenate(costs)
    feasible = cost <= budget + 1e-9
    return acc[feasible].max(), acc, cost, thr


def brute_pareto(acc: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((-acc, cost))
    best, keep = -1.0, []
    for i in order:
        if acc[i] > best + 1e-12:
            keep.append(i)
            best = acc[i]
    return acc[keep], cost[keep]


def budgets_between(costs: StageCosts, fractions) -> list[float]:
    lo, hi = costs.cumulative[0], costs.cumulative[-1]
    return [float(lo + f * (hi - lo)) for f in fractions]


# ---------------------------------------------------------------------------- basics


def test_exit_indices_semantics():
    conf = np.array(
        [
            [0.9, 0.5, 0.5, 0.1],
            [0.0, 0.8, 0.6, 0.1],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    # stop at the first exit whose confidence is >= its threshold; the last always answers
    assert exit_indices(conf, [0.7, 0.7]).tolist() == [0, 1, 2, 2]
    assert exit_indices(conf, [0.5, 0.6, 123.0]).tolist() == [0, 0, 0, 2]  # ">=" and last threshold ignored
    assert exit_indices(conf, [0.95, 0.1]).tolist() == [2, 1, 1, 1]
    assert exit_indices(conf, [np.inf, np.inf]).tolist() == [2, 2, 2, 2]
    assert exit_indices(conf, [-np.inf, np.inf]).tolist() == [0, 0, 0, 0]
    assert exit_indices(conf[:1], []).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="thresholds"):
        exit_indices(conf, [0.5])


def test_stage_costs_constructors():
    c = StageCosts.from_cumulative([1.5, 4.0, 10.0])
    np.testing.assert_allclose(c.mean, [1.5, 2.5, 6.0])
    np.testing.assert_allclose(c.cumulative, [1.5, 4.0, 10.0])
    assert c.unit == "GFLOPs" and c.samples is None
    s = StageCosts.from_samples([[1.0, 3.0], [2.0, 2.0, 5.0]])
    np.testing.assert_allclose(s.mean, [2.0, 3.0])
    np.testing.assert_allclose(s.cumulative, [2.0, 5.0])
    assert s.unit == "ms" and len(s.samples) == 2
    with pytest.raises(ValueError, match="non-decreasing"):
        StageCosts.from_cumulative([2.0, 1.0])
    with pytest.raises(ValueError, match="no latency samples"):
        StageCosts.from_samples([[1.0], []])


def test_input_forms_agree():
    probs, labels = synth_probs(3, 30, seed=3)
    costs = synth_costs(3, 3)
    out = ExitOutputs.from_probs(probs, labels)
    conf, pred = probs.max(axis=2), probs.argmax(axis=2)
    budget = budgets_between(costs, [0.4])[0]
    ref = search_thresholds(out, costs, budget).best
    for form in [dict(outputs=probs, labels=labels), dict(outputs=(conf, pred), labels=labels), dict(outputs=(conf, pred, labels))]:
        best = search_thresholds(costs=costs, budget=budget, **form).best
        assert best.accuracy == ref.accuracy and best.cost == ref.cost
    e1 = evaluate_thresholds(probs, labels, [0.6, 0.5], costs)
    e2 = evaluate_thresholds(out, None, [0.6, 0.5, 0.0], costs)
    assert e1.to_dict() == e2.to_dict()


def test_evaluate_thresholds_values():
    conf = np.array([[0.9, 0.2, 0.3, 0.95], [0.5, 0.9, 0.1, 0.5]])
    pred = np.array([[1, 0, 0, 3], [1, 1, 2, 3]])
    labels = np.array([1, 1, 2, 0])
    costs = StageCosts.from_cumulative([2.0, 5.0], unit="ms")
    ev = evaluate_thresholds((conf, pred), labels, [0.8], costs)
    # exits: 0, 1, 1, 0 -> correct: yes, yes, yes, no
    assert ev.accuracy == pytest.approx(75.0)
    np.testing.assert_allclose(ev.exit_fractions, [0.5, 0.5])
    assert ev.mean_cost == pytest.approx(3.5) and ev.cost == pytest.approx(3.5)
    assert ev.thresholds[-1] == -np.inf


def test_to_dict_json_serialisable():
    out = synth_outputs(3, 25, seed=1)
    costs = synth_costs(3, 1)
    res = search_thresholds(out, costs, budgets_between(costs, [0.5])[0], metric="p90")
    d = res.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["best"]["thresholds"][-1] is None
    assert back["algorithm"] == "exact" and back["metric"] == "p90" and back["unit"] == "ms"
    assert len(back["frontier"]) == len(res.frontier)
    np.testing.assert_array_equal(thresholds_from_list(back["best"]["thresholds"]), res.best.thresholds)
    # +inf ("never stop here") round-trips through None as well
    ev = evaluate_thresholds(out, None, [np.inf, 0.5], costs)
    assert ev.to_dict()["thresholds"] == [None, 0.5, None]
    np.testing.assert_array_equal(thresholds_from_list(ev.to_dict()["thresholds"]), [np.inf, 0.5, -np.inf])
    json.dumps(ev.to_dict(), allow_nan=False)
    # the manifest's E-1 form keeps exit 2's threshold (it became "always stop" and no image reached exit 3)
    np.testing.assert_array_equal(thresholds_from_list([None, 0.5], n_exits=3), [np.inf, 0.5, -np.inf])
    np.testing.assert_array_equal(thresholds_from_list([None, 0.5, 0.7], n_exits=3), [np.inf, 0.5, -np.inf])
    with pytest.raises(ValueError, match="got 1 thresholds for 3 exits"):
        thresholds_from_list([0.5], n_exits=3)
    # the JSON form (None = never stop) is accepted where thresholds are taken, and means the same
    again = evaluate_thresholds(out, None, back["best"]["thresholds"], costs)
    assert again.accuracy == res.best.accuracy and again.mean_cost == res.best.mean_cost
    np.testing.assert_array_equal(exit_indices(out.confidences, [None, 0.5, None]), exit_indices(out.confidences, [np.inf, 0.5]))
    for bad in ([float("nan"), 0.5, None], ["0.5", 0.5, None], [True, 0.5, None]):
        with pytest.raises(ValueError, match="NaN|numbers"):
            thresholds_from_list(bad)
    with pytest.raises(ValueError, match="numbers"):
        evaluate_thresholds(out, None, ["0.5", 0.5], costs)


def test_pareto_frontier():
    def ev(acc, cost):
        return Evaluation(np.array([0.5, -np.inf]), acc, cost, cost, np.array([0.5, 0.5]))

    evals = [ev(70, 5), ev(60, 3), ev(65, 6), ev(80, 9), ev(60, 2), ev(80, 8), ev(75, 8)]
    front = pareto_frontier(evals)
    assert [(e.accuracy, e.cost) for e in front] == [(60, 2), (70, 5), (80, 8)]


# ---------------------------------------------------------------------------- exact


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [12, 25, 40])
def test_exact_matches_brute_force_mean(seed, n):
    out = synth_outputs(3, n, seed)
    costs = synth_costs(3, seed)
    for budget in budgets_between(costs, [0.0, 0.1, 0.3, 0.5, 0.8, 1.0]):
        res = search_thresholds(out, costs, budget)
        best_acc, acc, cost, _ = brute_force(out, costs.cumulative, budget)
        assert res.best.accuracy == pytest.approx(best_acc)
        assert res.best.cost <= budget + 1e-9
        assert res.info["exact"] is True
        # the reported best is really what its thresholds achieve
        check = evaluate_thresholds(out, None, res.best.thresholds, costs)
        assert check.accuracy == res.best.accuracy and check.cost == pytest.approx(res.best.cost)
    # the frontier is the brute-force Pareto frontier
    front_acc, front_cost = brute_pareto(acc, cost)
    np.testing.assert_allclose([e.accuracy for e in res.frontier], front_acc)
    np.testing.assert_allclose([e.cost for e in res.frontier], front_cost)


@pytest.mark.parametrize("n_exits,n", [(2, 30), (4, 9)])
def test_exact_matches_brute_force_other_exit_counts(n_exits, n):
    out = synth_outputs(n_exits, n, seed=5)
    costs = synth_costs(n_exits, 5)
    for budget in budgets_between(costs, [0.05, 0.3, 0.6]):
        res = search_thresholds(out, costs, budget)
        assert res.best.accuracy == pytest.approx(brute_force(out, costs.cumulative, budget)[0])
        assert res.best.cost <= budget + 1e-9


def test_exact_with_ties():
    out = synth_outputs(3, 40, seed=7, round_to=1)  # confidences on a 0.1 grid: many ties
    costs = synth_costs(3, 7)
    for budget in budgets_between(costs, [0.1, 0.4, 0.7]):
        res = search_thresholds(out, costs, budget)
        assert res.best.accuracy == pytest.approx(brute_force(out, costs.cumulative, budget)[0])


def test_exact_percentile_matches_brute_force():
    out = synth_outputs(3, 14, seed=11)
    costs = synth_costs(3, 11)
    n_sim = 3000
    cands = [np.append(np.unique(out.confidences[e]), np.inf) for e in range(2)]
    evals = [evaluate_thresholds(out, None, t, costs, metric="p90", n_sim=n_sim) for t in itertools.product(*cands)]
    p90 = np.array([e.cost for e in evals])
    acc = np.array([e.accuracy for e in evals])
    for budget in np.quantile(p90, [0.0, 0.2, 0.5, 0.9]):
        res = search_thresholds(out, costs, float(budget), metric="p90", n_sim=n_sim)
        assert res.best.accuracy == pytest.approx(acc[p90 <= budget].max())
        assert res.best.cost <= budget
    front_acc, front_cost = brute_pareto(acc, p90)
    np.testing.assert_allclose([e.accuracy for e in res.frontier], front_acc)
    np.testing.assert_allclose([e.cost for e in res.frontier], front_cost)


def test_exact_subsampled_grid_is_flagged():
    out = synth_outputs(3, 60, seed=2)
    costs = synth_costs(3, 2)
    res = search_thresholds(out, costs, budgets_between(costs, [0.5])[0], max_candidates=10)
    assert res.info["exact"] is False and res.info["n_candidates"] == [11, 11]
    assert res.best.cost <= res.budget
    full = search_thresholds(out, costs, res.budget)
    assert full.best.accuracy >= res.best.accuracy


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(5, 40),
    frac=st.floats(0.0, 1.0),
    thr=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2),
)
def test_exact_feasible_and_dominates_random_thresholds(seed, n, frac, thr):
    out = synth_outputs(3, n, seed)
    costs = synth_costs(3, seed % 7)
    random_eval = evaluate_thresholds(out, None, thr, costs)
    budget = budgets_between(costs, [frac])[0]
    res = search_thresholds(out, costs, budget)
    assert res.best.cost <= budget + 1e-9
    if random_eval.cost <= budget:
        assert res.best.accuracy >= random_eval.accuracy
    costs_ = [e.cost for e in res.frontier]
    accs = [e.accuracy for e in res.frontier]
    assert costs_ == sorted(costs_) and all(b > a for a, b in zip(accs, accs[1:], strict=False))


def test_budget_above_everything_is_max_accuracy():
    out = synth_outputs(3, 30, seed=4)
    costs = synth_costs(3, 4)
    res = search_thresholds(out, costs, costs.cumulative[-1] * 2)
    _, acc, _, _ = brute_force(out, costs.cumulative, np.inf)
    assert res.best.accuracy == pytest.approx(acc.max())
    assert "all exits fit" in res.info["note"]


def test_single_exit():
    out = synth_outputs(1, 10, seed=0)
    costs = StageCosts.from_cumulative([3.0])
    res = search_thresholds(out, costs, 3.0)
    assert res.best.cost == pytest.approx(3.0)
    np.testing.assert_allclose(res.best.exit_fractions, [1.0])


# ---------------------------------------------------------------------------- ga


@pytest.mark.parametrize("frac", [0.0, 0.15, 0.4, 0.7])
def test_ga_close_to_brute_force_and_feasible(frac):
    out = synth_outputs(3, 200, seed=21)
    costs = synth_costs(3, 21)
    budget = budgets_between(costs, [frac])[0]
    best_acc, *_ = brute_force(out, costs.cumulative, budget)
    res = search_thresholds(out, costs, budget, algorithm="ga", seed=1)
    assert res.best.cost <= budget + 1e-9
    assert res.best.accuracy >= best_acc - 2.0
    check = evaluate_thresholds(out, None, res.best.thresholds, costs)
    assert check.accuracy == res.best.accuracy and check.cost <= budget + 1e-9
    # deterministic for a given seed
    again = search_thresholds(out, costs, budget, algorithm="ga", seed=1)
    np.testing.assert_array_equal(again.best.thresholds, res.best.thresholds)


def test_ga_percentile_never_infeasible():
    out = synth_outputs(4, 80, seed=8)
    costs = synth_costs(4, 8)
    floor = evaluate_thresholds(out, None, [-np.inf] * 3, costs, metric="p90").cost
    for budget in [floor, floor * 1.3, floor * 2.0]:
        res = search_thresholds(out, costs, budget, metric="p90", algorithm="ga", generations=15, seed_with_sweep=False)
        assert res.best.cost <= budget + 1e-9
        assert all(e.metric == "p90" for e in res.frontier)


# ---------------------------------------------------------------------------- sweep


def reference_find_threshold(max_preds: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Line-by-line port of MSDNet/DVT ``dynamic_eval_find_threshold`` (torch -> numpy)."""
    n_stage, n_sample = max_preds.shape
    sorted_idx = np.argsort(-max_preds, axis=1, kind="stable")
    filtered = np.zeros(n_sample)
    T = np.full(n_stage, 1e8)
    for k in range(n_stage - 1):
        count = 0
        out_n = math.floor(n_sample * p[k])
        for i in range(n_sample):
            ori_idx = sorted_idx[k][i]
            if filtered[ori_idx] == 0:
                count += 1
                if count == out_n:
                    T[k] = max_preds[k][ori_idx]
                    break
        filtered += max_preds[k] >= T[k]
    T[n_stage - 1] = -1e8
    return T


def test_sweep_hand_checked_two_exits():
    conf = np.array([[0.91, 0.35, 0.72, 0.55, 0.88, 0.15, 0.64, 0.42, 0.99, 0.27], np.linspace(0.1, 0.9, 10)])
    vectors = sweep_thresholds((conf, np.zeros_like(conf, dtype=int)), n_budgets=20)
    # p = 20: q = 1, probs = [1/2, 1/2] -> 5 samples leave at exit 1: the 5th largest confidence is 0.64
    assert vectors[19][0] == 0.64 and vectors[19][1] == -np.inf
    # p = 1: q = 0.05, probs[0] = 1/1.05 -> floor(9.52) = 9 leave: the 9th largest is 0.27
    assert vectors[0][0] == 0.27
    assert (exit_indices(conf, vectors[0]) == 0).sum() == 9


def test_sweep_matches_reference_and_target_fractions():
    out = synth_outputs(3, 97, seed=13)
    vectors = sweep_thresholds(out)
    assert len(vectors) == 59
    n = out.n_samples
    for p, thr in enumerate(vectors, start=1):
        q = p / 20
        probs = q ** np.arange(1, 4)
        probs /= probs.sum()
        ref = reference_find_threshold(out.confidences, probs)
        np.testing.assert_array_equal(np.where(thr == np.inf, 1e8, np.where(thr == -np.inf, -1e8, thr)), ref)
        counts = np.bincount(exit_indices(out.confidences, thr), minlength=3)
        # confidences are distinct, so exactly floor(N * probs_e) samples leave at exit e
        assert counts[0] == math.floor(n * probs[0])
        assert counts[1] == min(math.floor(n * probs[1]), n - counts[0])
    # ties: the reference lets every tied sample leave; so do we
    tied = synth_outputs(3, 60, seed=14, round_to=1)
    for p, thr in enumerate(sweep_thresholds(tied, n_budgets=39), start=1):
        probs = (p / 20) ** np.arange(1, 4)
        ref = reference_find_threshold(tied.confidences, probs / probs.sum())
        np.testing.assert_array_equal(np.where(np.isinf(thr), np.sign(thr) * 1e8, thr), ref)


def test_sweep_search_and_budget_curve():
    out = synth_outputs(3, 120, seed=15)
    costs = StageCosts.from_cumulative([1.0, 2.2, 3.5])
    curve = budget_curve(out, costs)
    assert len(curve) == 59 and all(e.unit == "GFLOPs" for e in curve)
    assert curve[0].mean_cost < curve[-1].mean_cost  # p grows -> later exits -> more FLOPs
    budget = 2.0
    res = search_thresholds(out, costs, budget, algorithm="sweep")
    feasible = [e.accuracy for e in curve if e.cost <= budget]
    assert res.best.accuracy == pytest.approx(max(feasible))
    front = pareto_frontier(curve)
    assert [e.accuracy for e in res.frontier] == [e.accuracy for e in front]
    # a budget below every sweep point falls back to "everyone stops at exit 1"
    low = search_thresholds(out, costs, 1.0, algorithm="sweep")
    np.testing.assert_allclose(low.best.exit_fractions, [1.0, 0.0, 0.0])
    assert "cheapest" in low.info["note"]


def test_frontier_table():
    out = synth_outputs(3, 40, seed=16)
    costs = synth_costs(3, 16)
    budgets = budgets_between(costs, [0.1, 0.4, 0.8])
    for algorithm in ALGORITHMS:
        kw = {"generations": 5} if algorithm == "ga" else {}
        table = frontier_table(out, costs, budgets, algorithm=algorithm, **kw)
        assert [r.budget for r in table] == budgets
        accs = [r.best.accuracy for r in table]
        if algorithm != "ga":
            assert accs == sorted(accs)
        for r, b in zip(table, budgets, strict=True):
            single = search_thresholds(out, costs, b, algorithm=algorithm, **kw)
            assert r.best.accuracy == single.best.accuracy and r.best.cost <= b + 1e-9


# ---------------------------------------------------------------------------- percentile metric


def test_percentile_single_exit_matches_numpy():
    out = synth_outputs(3, 50, seed=0)
    stage1 = np.random.default_rng(0).gamma(3.0, 2.0, size=400)
    costs = StageCosts.from_samples([stage1, stage1 + 1, stage1 + 2])
    for q in (50, 90, 99):
        ev = evaluate_thresholds(out, None, [-np.inf, -np.inf], costs, metric=f"p{q}")
        np.testing.assert_allclose(ev.exit_fractions, [1, 0, 0])
        assert ev.cost == pytest.approx(np.percentile(stage1, q), rel=0.03)
    same = evaluate_thresholds(out, None, [-np.inf, -np.inf], costs, metric="p90", seed=0)
    assert same.cost == evaluate_thresholds(out, None, [-np.inf, -np.inf], costs, metric="p90", seed=0).cost


def test_a_measured_percentile_is_the_one_the_search_priced():
    """At the mix a p90 search aims at (exactly 10% of the images at the slow exit) the search priced exit 1's time,
    while every measurement (profiles, calibrate's measured holdout, predict's verdict) used numpy's linear percentile,
    a tenth of the way to exit 3's: 1.03 ms 'measured' against 0.5 predicted, and an OVER for a budget the run met."""
    from dvt_runtime.search import _CostModel
    from dvt_runtime.stats import percentile, sample_stats

    streams = [np.full(50, 0.5), np.full(50, 1.5), np.full(50, 5.8)]  # each exit's time, constant
    costs = StageCosts.from_samples([streams[0], streams[1] - 0.5, streams[2] - 1.5], stopping=streams)
    priced = float(_CostModel(costs, "p90", 250).cost(np.array([[225, 0, 25]]))[0])
    measured = np.array([0.5] * 225 + [5.8] * 25)  # those 250 images, timed
    assert priced == 0.5 and sample_stats(measured)["p90"] == percentile(measured, 90) == 0.5
    assert percentile(np.r_[measured[:-1], 5.8, 5.8], 90) == 5.8  # one more at exit 3: over, in both
    assert float(_CostModel(costs, "p90", 251).cost(np.array([[225, 0, 26]]))[0]) == 5.8


def test_stopping_streams_price_each_exit():
    """With per-exit streams, stopping at an exit costs that stream's latency, not the sum of
    the stages measured in full chains (mean and percentiles)."""
    out = synth_outputs(3, 50, seed=0)
    rng = np.random.default_rng(1)
    stages = [rng.gamma(3.0, 1.0, 300) + 9.0, rng.gamma(3.0, 1.0, 300), rng.gamma(3.0, 1.0, 300)]  # stage 1 ~12 ms in chains
    streams = [rng.gamma(3.0, 1.0, 300) + 2.0, rng.gamma(3.0, 1.0, 300) + 14.0, rng.gamma(3.0, 1.0, 300) + 16.0]
    costs = StageCosts.from_samples(stages, stopping=streams)
    np.testing.assert_allclose(costs.cumulative, [s.mean() for s in streams])
    chains = StageCosts.from_samples(stages)
    for q in (50, 90):
        at1 = evaluate_thresholds(out, None, [-np.inf, -np.inf], costs, metric=f"p{q}")
        assert at1.cost == pytest.approx(np.percentile(streams[0], q), rel=0.05)
        assert evaluate_thresholds(out, None, [-np.inf, -np.inf], chains, metric=f"p{q}").cost > at1.cost + 5
    at1 = evaluate_thresholds(out, None, [-np.inf, -np.inf], costs)
    assert at1.cost == pytest.approx(streams[0].mean())
    # a stream cheaper than an earlier exit's is priced at least as that exit (monotone costs)
    odd = StageCosts.from_samples(stages, stopping=[np.full(5, 3.0), np.full(5, 2.0), np.full(5, 4.0)])
    np.testing.assert_allclose(odd.cumulative, [3.0, 3.0, 4.0])
    p = [evaluate_thresholds(out, None, t, odd, metric="p90").cost for t in ([-np.inf, -np.inf], [np.inf, -np.inf])]
    assert p[0] <= p[1]
    with pytest.raises(ValueError, match="stopping-stream samples for 2 exits but 3"):
        StageCosts.from_samples(stages, stopping=streams[:2])
    with pytest.raises(ValueError, match="finite"):
        StageCosts.from_samples(stages, stopping=[streams[0], streams[1], [np.nan]])


def test_percentile_of_mixture_is_not_mixture_of_percentiles():
    # 10 samples, 8 stop at exit 1 (10 ms), 2 continue to exit 2 (10 + 5 ms)
    conf = np.array([[0.9] * 8 + [0.1] * 2, [0.5] * 10])
    pred = np.zeros((2, 10), dtype=int)
    labels = np.zeros(10, dtype=int)
    costs = StageCosts.from_samples([[10.0], [5.0]])
    ev = evaluate_thresholds((conf, pred), labels, [0.5], costs, metric="p90")
    mixture_of_p90s = 0.8 * 10.0 + 0.2 * 15.0
    assert ev.cost == 15.0 and ev.mean_cost == pytest.approx(11.0)
    assert ev.cost != pytest.approx(mixture_of_p90s)
    assert evaluate_thresholds((conf, pred), labels, [0.5], costs, metric="p75").cost == 10.0
    # stochastic version: simulated p90 of the mixture vs the fraction-weighted per-exit p90s
    rng = np.random.default_rng(3)
    s1, s2 = rng.normal(10, 1, 500).clip(0), rng.normal(5, 1, 500).clip(0)
    costs = StageCosts.from_samples([s1, s2])
    ev = evaluate_thresholds((conf, pred), labels, [0.5], costs, metric="p90")
    naive = 0.8 * np.percentile(s1, 90) + 0.2 * np.percentile(s1[:, None] + s2[None, :], 90)
    assert abs(ev.cost - naive) > 1.0
    assert ev.cost == pytest.approx(np.percentile(np.concatenate([np.repeat(s1, 4)[:2000], (s1 + s2)[:500]]), 90), rel=0.05)


# ---------------------------------------------------------------------------- errors


def test_errors():
    probs, labels = synth_probs(3, 20, seed=0)
    out = ExitOutputs.from_probs(probs, labels)
    costs = StageCosts.from_cumulative([1.0, 2.0, 3.0], unit="GFLOPs")
    with pytest.raises(ValueError, match="unknown algorithm.*exact, ga, sweep"):
        search_thresholds(out, costs, 2.0, algorithm="bayes")
    with pytest.raises(ValueError, match="unknown metric"):
        search_thresholds(out, costs, 2.0, metric="median")
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="budget must be a finite, non-negative"):
            search_thresholds(out, costs, bad)
    with pytest.raises(ValueError, match=r"below the cheapest achievable mean cost 1 GFLOPs.*at least 1 GFLOPs"):
        search_thresholds(out, costs, 0.5)
    with pytest.raises(ValueError, match="empty validation set"):
        ExitOutputs.from_probs(np.zeros((3, 0, 5)), np.zeros(0))
    with pytest.raises(ValueError, match="empty validation set"):
        search_thresholds((np.zeros((3, 0)), np.zeros((3, 0))), costs, 2.0, labels=np.zeros(0))
    with pytest.raises(ValueError, match="labels length mismatch"):
        search_thresholds(probs, costs, 2.0, labels=labels[:-1])
    with pytest.raises(ValueError, match="labels are missing"):
        search_thresholds(probs, costs, 2.0)
    with pytest.raises(ValueError, match="3-D"):
        search_thresholds(probs[0], costs, 2.0, labels=labels)
    with pytest.raises(ValueError, match="2 stages but the outputs have 3 exits"):
        search_thresholds(out, StageCosts.from_cumulative([1.0, 2.0]), 2.0)
    nan_probs = probs.copy()
    nan_probs[1, 3, :] = np.nan
    with pytest.raises(ValueError, match="NaN.*exit 2"):
        ExitOutputs.from_probs(nan_probs, labels)
    with pytest.raises(ValueError, match="latency samples"):
        search_thresholds(out, costs, 2.0, metric="p90")
    with pytest.raises(ValueError, match="unknown option.*max_candidate"):
        search_thresholds(out, costs, 2.0, max_candidate=5)
    with pytest.raises(ValueError, match="labels differ"):
        search_thresholds(out, costs, 2.0, labels=labels[::-1] + 1)
    for opt, v, match in (("mutation_rate", float("nan"), "mutation_rate must be a probability"),
                          ("mutation_rate", -3.0, "mutation_rate must be a probability"),
                          ("crossover_rate", 5.0, "crossover_rate must be a probability"),
                          ("mutation_scale", 0.0, "mutation_scale must be a finite number > 0"),
                          ("mutation_scale", float("nan"), "mutation_scale must be a finite number > 0")):
        with pytest.raises(ValueError, match=match):
            search_thresholds(out, costs, 2.0, algorithm="ga", **{opt: v})


def test_budget_below_minimum_percentile_names_minimum():
    out = synth_outputs(2, 20, seed=0)
    costs = StageCosts.from_samples([[4.0, 5.0, 6.0], [1.0]])
    with pytest.raises(ValueError, match=r"cheapest achievable p90 cost 6 ms"):
        search_thresholds(out, costs, 3.0, metric="p90")
    with pytest.raises(ValueError, match=r"cheapest achievable"):
        frontier_table(out, costs, [10.0, 3.0], metric="p90")


def test_exact_thresholds_sit_between_observed_confidences():
    """A threshold on an observed confidence flips that sample on a last-bit difference (a deployed artifact's
    output; the export's decision agreement read 83% with logits equal to 8e-7): the exact search puts each
    threshold halfway to the next lower confidence, the same split of these samples."""
    from dvt_runtime.search import _candidates

    probs, labels = synth_probs(3, 300, seed=4)
    out = ExitOutputs.from_probs(probs, labels)
    costs = StageCosts(mean=[1.0, 2.0, 4.0])
    res = search_thresholds(out, costs, budget=7.0 * (1 + 1e-9), algorithm="exact")
    seen = 0
    for p in res.frontier:
        thr = np.array([np.inf if t is None else t for t in p.to_dict()["thresholds"][:-1]] + [-np.inf], float)
        on_sample = thr.copy()  # the same split with each threshold on the observed confidence just above it
        for e, t in enumerate(thr[:-1]):
            c = out.confidences[e]
            if np.isfinite(t) and t > c.min():
                assert not np.any(c == t), (e, t)
                below, above = c[c < t].max(), c[c > t].min()
                assert t == pytest.approx((below + above) / 2, rel=1e-12), (below, t, above)
                on_sample[e] = above
                seen += 1
        same = evaluate_thresholds(out, None, on_sample, costs)
        assert same.accuracy == p.accuracy and same.mean_cost == pytest.approx(p.mean_cost, rel=1e-12)
    assert seen > 5
    # two confidences one ulp apart have no midpoint: the upper one itself is the threshold (the split stays exact)
    up = np.nextafter(0.5, 1.0)
    cands, complete = _candidates(np.array([0.5, up, 0.9]), cap=10)
    assert complete and list(cands) == [np.inf, pytest.approx((up + 0.9) / 2), up, 0.0]  # lowest: everything stops
    # subsampled: still halfway to the next lower observed confidence, not to the next candidate
    conf = np.linspace(0.2, 0.9, 101)
    cands, complete = _candidates(conf, cap=5)
    assert not complete and all(not np.any(conf == t) for t in cands[1:-1]) and cands[-1] == 0.0
    assert all(np.sum(conf >= t) == np.sum(conf >= conf[conf > t].min()) for t in cands[1:-1])


def test_the_cheapest_setting_stops_new_images_at_exit_1_too():
    """Everything stopping at exit 1 is threshold 0, not the lowest confidence seen: an image less confident
    than every calibration image would otherwise run on past the budget."""
    probs = np.array([[[0.9, 0.1], [0.05, 0.95]], [[0.99, 0.01], [0.01, 0.99]]])  # (E=2, N=2, classes)
    out = ExitOutputs.from_probs(probs, np.array([0, 1]))
    res = search_thresholds(out, StageCosts(mean=[1.0, 3.0]), budget=1.0, algorithm="exact")
    assert res.best.to_dict()["thresholds"][0] == 0.0
