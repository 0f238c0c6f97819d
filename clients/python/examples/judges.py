"""Judges for the online SELM demo: functions that score one response to one prompt.

A judge is any callable ``judge(prompt: str, sample: selm_client.Sample) -> float``; higher is
better. The demo turns the scores of k sampled responses into a preference pair (best → chosen,
worst → rejected) with the greedy response as SELM's reference response y_ref.
"""
from __future__ import annotations

from typing import Callable

from selm_client import Sample

Judge = Callable[[str, Sample], float]


def concise_judge(target_tokens: int = 24, per_extra_token: float = 0.02, missing_eos_penalty: float = 1.0) -> Judge:
    """A transparent rule-based reward: an answer that ends on its own (EOS) and stays short.

    reward = +1 if the response ended with EOS, else −``missing_eos_penalty`` (TRL's missing-EOS
    penalty), minus ``per_extra_token`` for every token beyond ``target_tokens``.
    """
    def judge(prompt: str, sample: Sample) -> float:
        reward = 1.0 if sample.finish_reason == "eos" else -missing_eos_penalty
        reward -= per_extra_token * max(0, sample.completion_tokens - target_tokens)
        return reward
    return judge


def keyword_judge(word: str, bonus: float = 1.0) -> Judge:
    """An example of a custom judge: rewards responses that mention ``word`` (case-insensitive)."""
    def judge(prompt: str, sample: Sample) -> float:
        return bonus if word.lower() in sample.text.lower() else 0.0
    return judge
