import pytest

from expkit.errors import UsageError
from expkit.version import Version


@pytest.mark.parametrize("text", ["1.4", "v1.4.1", "../x", "1.4.1;rm -rf /", "01.2.3", "1.02.3", "1.2.03", "", "1.2.3.4", " 1.2.3", "1.2.3\n", "-1.2.3", "1.2.x", "１.2.3"])
def test_malformed_versions_are_refused_with_the_form(text):
    with pytest.raises(UsageError, match="X.Y.Z"):
        Version.parse(text)
    assert not Version.is_valid(text)


def test_parse_order_and_text():
    vs = [Version.parse(t) for t in ["1.10.0", "1.4.1", "0.1.0", "1.4.0", "10.0.0"]]
    assert [str(v) for v in sorted(vs)] == ["0.1.0", "1.4.0", "1.4.1", "1.10.0", "10.0.0"]
    assert Version.parse("0.0.0") == Version(0, 0, 0)


@pytest.mark.parametrize(
    "text,category", [("1.0.0", "production"), ("2.0.0", "production"), ("1.4.0", "exploratory"), ("1.4.1", "validation"), ("1.4.9", "validation")]
)
def test_category_follows_the_manual(text, category):
    assert Version.parse(text).category == category


def test_bump_and_stem():
    v = Version.parse("1.4.1")
    assert str(v.bump("patch")) == "1.4.2"
    assert str(v.bump("minor")) == "1.5.0"
    assert str(v.bump("major")) == "2.0.0"
    assert v.stem == "experiment_1.4.1"
