"""What changes a denoising step: step caching (TaylorSeer, openvino.genai's default) and skip-layer guidance.

Plain settings and arithmetic on the transformer's outputs; the pipeline in `sd3_runtime` uses them. Imports
nothing of the project.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TaylorSeerConfig:
    """Step caching ("TaylorSeer lite"), with the fields and defaults of openvino.genai's `TaylorSeerCacheConfig`.

    Steps before `disable_cache_before_step` and from `disable_cache_after_step` on (negative: counted from the
    end) run the transformer. In between, one step in `cache_interval` runs it and the others predict its output
    from the last two computed ones by a first-order Taylor expansion in the step index, skipping the transformer
    (with the defaults, 14 of 28 steps). The image differs a little from the uncached one. On by default in our
    pipelines, as in openvino.genai (`DEFAULT_STEP_CACHE`); `taylorseer=None` computes every step, diffusers' image.
    Calls of 8 steps or fewer never skip one with these defaults.
    """

    cache_interval: int = 3
    disable_cache_before_step: int = 6
    disable_cache_after_step: int = -2

    def __post_init__(self):
        if not isinstance(self.cache_interval, int) or self.cache_interval < 2:
            raise ValueError(f"`cache_interval` has to be an int >= 2 but is {self.cache_interval!r}.")
        if not isinstance(self.disable_cache_before_step, int) or self.disable_cache_before_step < 0:
            raise ValueError(f"`disable_cache_before_step` has to be an int >= 0 but is {self.disable_cache_before_step!r}.")
        if not isinstance(self.disable_cache_after_step, int):
            raise ValueError(f"`disable_cache_after_step` has to be an int but is {self.disable_cache_after_step!r}.")


# The pipelines' default `taylorseer=`: openvino.genai's defaults (docs/speed.md has the time and image difference).
DEFAULT_STEP_CACHE = TaylorSeerConfig()


class TaylorSeerCache:
    """The transformer outputs of the last computed step and their derivative per step, for `TaylorSeerConfig`."""

    def __init__(self, config: TaylorSeerConfig, *, num_steps: int):
        self.config = config
        after = config.disable_cache_after_step
        self.last_cached_step = (num_steps + after if after < 0 else after) - 1
        self.value = self.derivative = self.step = None

    def computes(self, step: int) -> bool:
        """True when `step` runs the transformer, False when its output is predicted."""
        first = self.config.disable_cache_before_step
        if self.value is None or not first <= step <= self.last_cached_step:
            return True
        return (step - first) % self.config.cache_interval == self.config.cache_interval - 1

    def update(self, step: int, value: np.ndarray) -> None:
        """Record the transformer's output of a computed step."""
        if self.value is not None:
            self.derivative = (value - self.value) / (step - self.step)
        self.value, self.step = value, step

    def predict(self, step: int) -> np.ndarray:
        """The transformer's output at `step`, extrapolated from the last two computed steps."""
        return self.value if self.derivative is None else self.value + self.derivative * (step - self.step)


@dataclass(frozen=True)
class SkipLayerGuidance:
    """diffusers' skip-layer guidance: on the steps strictly between `start` and `stop` (fractions of the steps),
    one more transformer pass on the positive prompt with the blocks `layers` skipped, and the guided flow moves
    away from it by `scale` x (conditional - skipped). Stability recommends layers 7, 8, 9 for SD3.5 Medium."""

    layers: tuple[int, ...]
    scale: float = 2.8
    start: float = 0.01
    stop: float = 0.2

    def active(self, step: int, *, num_steps: int) -> bool:
        """True when `step` (0-based, of `num_steps`) runs the extra pass, as diffusers decides it."""
        return num_steps * self.start < step < num_steps * self.stop


def classifier_free_guidance(noise_pred: np.ndarray, *, guidance_scale: float) -> np.ndarray:
    """Move from the unconditional prediction (the first half of `noise_pred`) past the conditional one; unguided
    calls (`guidance_scale <= 1`) return `noise_pred` as it is."""
    if guidance_scale <= 1.0:
        return noise_pred
    noise_pred_uncond, noise_pred_text = np.split(noise_pred, 2)
    return noise_pred_uncond + np.float32(guidance_scale) * (noise_pred_text - noise_pred_uncond)
