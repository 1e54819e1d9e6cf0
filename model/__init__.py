"""The language model package: modeling, data, tokenizer, the training entry point.

Importing it registers the model with transformers' Auto classes, so a saved run loads with

    import model
    AutoModelForCausalLM.from_pretrained("out/experiment_X.Y.Z/final")

and a classification run's final/ with ``AutoModelForSequenceClassification.from_pretrained``.
"""

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from .classify import MiniMindForSequenceClassification
from .modeling import MiniMindConfig, MiniMindForCausalLM

AutoConfig.register(MiniMindConfig.model_type, MiniMindConfig, exist_ok=True)
AutoModelForCausalLM.register(MiniMindConfig, MiniMindForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(MiniMindConfig, MiniMindForSequenceClassification, exist_ok=True)

__all__ = ["MiniMindConfig", "MiniMindForCausalLM", "MiniMindForSequenceClassification"]
