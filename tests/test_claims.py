"""Expected-result lines become typed claims; claim-like lines that don't parse are reported."""

import pytest

from expkit.claims import parse_claims, unknown_metric_hint

TEXT = """我们预计验证集损失会下降：
- val_loss < 2.5
- val_loss <= baseline - 0.1   # 至少好 0.1
- tokens_per_s >= parent * 1.1 （吞吐不下降）
* val_ppl ≤ 30
- 这一行是普通文字
- loss <> 3
```
- val_loss < 999 inside a code fence is an example, not a claim
```
- final_loss > parent * 110%
"""


def test_claims_parse_into_metric_operator_reference():
    claims, problems = parse_claims(TEXT, first_line=10)
    got = [(c.metric, c.op, c.reference, c.ref_op, c.value, c.line) for c in claims]
    assert got == [
        ("val_loss", "<", "value", None, 2.5, 11),
        ("val_loss", "<=", "baseline", "-", 0.1, 12),
        ("tokens_per_s", ">=", "parent", "*", 1.1, 13),
        ("val_ppl", "<=", "value", None, 30.0, 14),
        ("final_loss", ">", "parent", "*", 110.0, 20),
    ]
    assert claims[1].text == "val_loss <= baseline - 0.1"
    assert [(p.line, p.text) for p in problems] == [(16, "- loss <> 3")]


def test_thresholds_and_holds():
    claims, _ = parse_claims(TEXT)
    lt, minus, times, _, pct = claims
    assert lt.threshold() == 2.5 and lt.holds(2.4) is True and lt.holds(2.5) is False
    assert minus.threshold(3.0) == pytest.approx(2.9)
    assert minus.holds(2.95, 3.0) is False
    assert minus.holds(2.5, None) is None  # no baseline value: cannot decide
    assert times.threshold(1000.0) == pytest.approx(1100.0)
    assert pct.threshold(2.0) == pytest.approx(2.2)


@pytest.mark.parametrize("line", ["- val_loss < ", "- val_loss < parent +", "- val_loss =< 2", "- val_loss < 5%", "- val_loss < parent / 0"])
def test_malformed_claims_are_problems(line):
    claims, problems = parse_claims(line)
    assert claims == [] and len(problems) == 1


def test_unknown_metric_gets_a_suggestion():
    assert unknown_metric_hint("val_loss") is None
    assert "val_loss" in unknown_metric_hint("val_los")
