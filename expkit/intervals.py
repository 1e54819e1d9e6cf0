"""Confidence intervals over replicates: the Student t quantile, a sample's 95 % interval, and
Welch's interval of a difference. Layer 3 (pure, standard library only: no scipy).

Every function takes a plain list of per-replicate values (one value per seed), so whatever
produces replicates — today a record's single run, later the replicates runner's ``r{i}/``
directories — plugs in by handing over that list.

The t quantile is exact to ~1e-10: the t distribution's CDF through the regularized
incomplete beta function (Lentz's continued fraction, as in Numerical Recipes §6.4), inverted
by bisection, which cannot fail to converge. Non-integer degrees of freedom (Welch) work the
same way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

#: The confidence level of every interval the verdicts use.
CONFIDENCE = 0.95


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), 0 ≤ x ≤ 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` > 0 degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, not {df}")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@functools.lru_cache(maxsize=1024)
def t_quantile(p: float, df: float) -> float:
    """The t with P(T ≤ t) = p: t_quantile(0.975, 2) = 4.302653, (0.975, 30) = 2.042272."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie strictly between 0 and 1, not {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:  # df = 1 at p = 0.975 needs 12.7; smaller df or larger p more
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Interval:
    """A two-sided interval for a mean (or a difference of means): ``mean`` ± ``half``."""

    mean: float
    half: float  # half-width; 0 when every replicate agrees
    df: float | None  # degrees of freedom of the t quantile used (None: no spread was estimated)

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n − 1; None for a single value)."""
    n = len(values)
    if not n:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (n - 1))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The Student t interval of the mean of ``values`` (n ≥ 2): mean ± t(1−α/2, n−1)·sd/√n."""
    n = len(values)
    if n < 2:
        raise ValueError("an interval needs at least 2 values")
    mean, sd = mean_sd(values)
    assert sd is not None
    df = n - 1
    return Interval(mean, t_quantile(0.5 + confidence / 2.0, df) * sd / math.sqrt(n), df)


def welch_df(sd1: float, n1: int, sd2: float, n2: int) -> float | None:
    """Welch–Satterthwaite degrees of freedom; None when both samples have no spread."""
    v1, v2 = sd1 * sd1 / n1, sd2 * sd2 / n2
    denominator = v1 * v1 / (n1 - 1) + v2 * v2 / (n2 - 1)
    return (v1 + v2) ** 2 / denominator if denominator > 0 else None


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The interval of mean(a) − mean(b) without assuming equal variances (Welch); each side n ≥ 2."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's interval needs at least 2 values on each side")
    ma, sa = mean_sd(a)
    mb, sb = mean_sd(b)
    assert sa is not None and sb is not None
    df = welch_df(sa, len(a), sb, len(b))
    if df is None:
        return Interval(ma - mb, 0.0, None)
    se = math.sqrt(sa * sa / len(a) + sb * sb / len(b))
    return Interval(ma - mb, t_quantile(0.5 + confidence / 2.0, df) * se, df)


def spread_interval(value: float, sd: float, runs: int, scale: float = 1.0,
                    confidence: float = CONFIDENCE) -> Interval:
    """One run's value ± t(1−α/2, runs−1)·sd·scale, ``sd`` estimated from ``runs`` other runs of
    its configuration (a single draw from a distribution of spread sd; ``scale`` √2 when a
    reference's single value carries the same noise)."""
    if runs < 2:
        raise ValueError("a spread needs at least 2 runs")
    df = runs - 1
    return Interval(value, t_quantile(0.5 + confidence / 2.0, df) * sd * scale, df)
