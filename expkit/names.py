"""Names several layers share: the files a run writes, and the word for what expkit ships.

Layer 0: constants only. The trainer (``model/``) writes these files and the analysis reads
them; one definition keeps the two from drifting apart.
"""

from __future__ import annotations

#: ``data_path`` / ``val_data_path`` / ``tokenizer_path`` value meaning the corpus and tokenizer
#: shipped with expkit (``dataset/``), found from any workspace without setup.
EMBEDDED = "embedded"

#: What a run writes into ``out/experiment_X.Y.Z/``.
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
SAMPLES_FILE = "samples.json"
STATUS_FILE = "status.json"

#: What ``exp analyze`` adds beside them for ``exp site``: the run's curves, thinned once (``pages.curves_file_text``).
CURVES_FILE = "curves.json"
