"""Rendered records compared with expected files (regenerate: UPDATE_GOLDEN=1 pytest tests/test_templates.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from expkit import times
from expkit.version import Version
from expkit import lifecycle

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_new_record_matches_the_expected_file(ws, monkeypatch, lang):
    monkeypatch.setattr(times, "now", lambda: "2026-01-02T03:04:05+00:00")
    lifecycle.create(ws, Version.parse("1.4.0"), description="parent", lang=lang)
    lifecycle.create(ws, Version.parse("1.0.0"), description="baseline", lang=lang)
    lifecycle.set_config(ws, Version.parse("1.4.0"), ["model_type=model", "knowledge_num=1048576"])
    rec = lifecycle.create(
        ws, Version.parse("1.4.1"), parent=Version.parse("1.4.0"), baseline=Version.parse("1.0.0"),
        description="验证2M知识库对生成质量的影响 | pipes", lang=lang,
    )
    lifecycle.set_config(ws, Version.parse("1.4.1"), ["knowledge_num=2097152"])
    text = rec.path.read_text(encoding="utf-8")
    golden = GOLDEN / f"experiment_1.4.1.{lang}.md"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
