"""The language model package: modeling, data, tokenizer, the training entry point.

Importing it registers the model with transformers' Auto classes, so a saved run loads with

    import model
    AutoModelForCausalLM.from_pretrained("out/experiment_X.Y.Z/final")

and a classification run's final/ with ``AutoModelForSequenceClassification.from_pretrained``.

Start-up: the cyclic garbage collector is paused while torch and transformers load, then restored
as it was. Their import creates about a million objects, and the collector, triggered by every
700 new ones, ran some 900 times over the growing heap: 0.8 s, a fifth of the trainer's start-up
to its first step. When this package is imported by ``python -m model.<entry point>`` (a trainer,
``model.prepare``: a process of its own; ``sys.argv[0]`` is ``"-m"`` while ``-m`` imports the
package) the loaded objects are also frozen (``gc.freeze``) before the collector resumes: they
live as long as the process, and the collector never scans them again. Imported by anything else,
the package leaves the collector as it found it.
"""

import gc as _gc
import sys as _sys

_collecting = _gc.isenabled()
_gc.disable()
try:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from .classify import MiniMindForSequenceClassification
    from .modeling import MiniMindConfig, MiniMindForCausalLM
finally:
    if _collecting:
        if _sys.argv[:1] == ["-m"]:
            _gc.freeze()
        _gc.enable()

AutoConfig.register(MiniMindConfig.model_type, MiniMindConfig, exist_ok=True)
AutoModelForCausalLM.register(MiniMindConfig, MiniMindForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(MiniMindConfig, MiniMindForSequenceClassification, exist_ok=True)

__all__ = ["MiniMindConfig", "MiniMindForCausalLM", "MiniMindForSequenceClassification"]
