"""Argument checks shared by the pipelines and the demo: each raises a TypeError or ValueError that names the
argument, shows its value and says the fix, so that a message is written once."""

import math
from numbers import Real


def check_strength(strength, *, num_inference_steps: int) -> float:
    """`strength` as a float in [0, 1] that leaves at least one of `num_inference_steps` denoising steps."""
    if isinstance(strength, bool) or not isinstance(strength, Real):
        raise TypeError(f"`strength` has to be a number between 0 and 1 but is {type(strength).__name__}: {strength!r:.80}.")
    if not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise ValueError(f"`strength` has to be between 0 and 1 but is {strength!r}.")
    if isinstance(num_inference_steps, int) and not isinstance(num_inference_steps, bool) and num_inference_steps * strength < 1:
        raise ValueError(
            f"`strength` {strength} with `num_inference_steps` {num_inference_steps} leaves no denoising step "
            f"({num_inference_steps} x {strength} < 1). Use `strength` >= {1 / num_inference_steps:.4g} or more steps."
        )
    return float(strength)
