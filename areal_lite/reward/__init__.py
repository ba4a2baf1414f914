"""Reward functions: picklable top-level `fn(completion: str, answer: str) -> float`."""

from areal_lite.reward.math import answers_match, extract_answer, math_reward, normalize_answer, parse_number

__all__ = ["answers_match", "extract_answer", "math_reward", "normalize_answer", "parse_number"]
