"""diffusers' `FlowMatchEulerDiscreteScheduler` in numpy: SD3's flow-matching Euler sampler without torch.

`FlowMatchEulerScheduler` is built from a converted folder's `scheduler/scheduler_config.json` and gives the same
`timesteps`, `sigmas` and step results as diffusers 0.39 (tests/test_torch_free.py compares every config field the
SD3 and SD3.5 schedulers use). Arrays are numpy float32; timesteps may be passed as numpy or torch scalars.

Imports numpy, the layout and the noise (for `stochastic_sampling`); scipy only for `use_beta_sigmas`.
"""

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Mapping

import numpy as np

from ..core.layout import SCHEDULER_CONFIG, incomplete_model_error, read_json
from .noise import randn_tensor

SCHEDULER_CLASS = "FlowMatchEulerDiscreteScheduler"  # the diffusers class this module ports
TIME_SHIFT_TYPES = ("exponential", "linear")


@dataclass(frozen=True)
class SchedulerConfig:
    """The fields of `scheduler_config.json`, with diffusers' defaults; read as `config.shift` or `config.get("shift")`."""

    num_train_timesteps: int = 1000  # timesteps the model was trained on; timestep = sigma * this
    shift: float = 1.0  # static shift of the sigmas: shift * s / (1 + (shift - 1) * s); SD3 uses 3.0
    use_dynamic_shifting: bool = False  # shift by `mu` per image size instead (`calculate_shift`)
    base_shift: float | None = 0.5  # mu at `base_image_seq_len` tokens
    max_shift: float | None = 1.15  # mu at `max_image_seq_len` tokens
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    invert_sigmas: bool = False  # sigmas 1 - s, ending at 1 (Mochi)
    shift_terminal: float | None = None  # stretch the shifted sigmas so the last one is this
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False  # needs scipy
    time_shift_type: str = "exponential"  # of the dynamic shift: "exponential" or "linear"
    stochastic_sampling: bool = False  # re-noise x0 to the next sigma with fresh noise instead of an Euler step

    def __post_init__(self):
        chosen = [name for name in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas") if getattr(self, name)]
        if len(chosen) > 1:
            raise ValueError(f"Only one of `use_beta_sigmas`, `use_exponential_sigmas`, `use_karras_sigmas` can be used, but {chosen} are set.")
        if self.time_shift_type not in TIME_SHIFT_TYPES:
            raise ValueError(f"`time_shift_type` must be one of {list(TIME_SHIFT_TYPES)} but is {self.time_shift_type!r}.")

    @classmethod
    def from_dict(cls, config: Mapping) -> "SchedulerConfig":
        """The known fields of `config` (a dict, diffusers' FrozenDict or a SchedulerConfig); `_class_name`,
        `_diffusers_version` and fields of other diffusers versions are ignored, as diffusers ignores them."""
        if isinstance(config, SchedulerConfig):
            return config
        names = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in dict(config).items() if key in names})

    def get(self, name: str, default=None):
        """`config.get("shift", 1.0)`, as on diffusers' config dict."""
        return getattr(self, name, default)

    def to_dict(self) -> dict:
        return {"_class_name": SCHEDULER_CLASS, **asdict(self)}


@dataclass
class FlowMatchEulerSchedulerOutput:
    prev_sample: np.ndarray  # (B, C, H, W) float32: the sample at the next (lower) noise level


def calculate_shift(image_seq_len: int, *, base_seq_len: int, max_seq_len: int, base_shift: float, max_shift: float) -> float:
    """`mu` of the dynamic shift: linear in the number of image tokens, `base_shift` at `base_seq_len`."""
    # Adapted from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3.calculate_shift
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def retrieve_timesteps(scheduler: "FlowMatchEulerScheduler", *, num_inference_steps: int | None = None, timesteps=None, sigmas=None, **kwargs):
    """(timesteps, num_inference_steps) after `scheduler.set_timesteps`; custom `timesteps` or `sigmas` override the
    step count, as in diffusers. `kwargs` (`mu`) go to `set_timesteps`."""
    # Adapted from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3.retrieve_timesteps
    if timesteps is not None and sigmas is not None:
        raise ValueError("Only one of `timesteps` or `sigmas` can be passed. Please choose one to set custom values")
    if timesteps is not None or sigmas is not None:
        scheduler.set_timesteps(timesteps=timesteps, sigmas=sigmas, **kwargs)
        return scheduler.timesteps, len(scheduler.timesteps)
    scheduler.set_timesteps(num_inference_steps, **kwargs)
    return scheduler.timesteps, num_inference_steps


class FlowMatchEulerScheduler:
    """Euler steps along the flow from noise (sigma 1) to data (sigma 0), as diffusers' FlowMatchEulerDiscreteScheduler."""

    order = 1
    init_noise_sigma = 1.0

    def __init__(self, config: SchedulerConfig | None = None):
        # Adapted from diffusers FlowMatchEulerDiscreteScheduler.__init__
        self.config = config or SchedulerConfig()
        train_steps = self.config.num_train_timesteps
        timesteps = np.linspace(1, train_steps, train_steps, dtype=np.float32)[::-1].copy()
        sigmas = timesteps / np.float32(train_steps)
        if not self.config.use_dynamic_shifting:
            sigmas = self.config.shift * sigmas / (1 + (self.config.shift - 1) * sigmas)
        self.timesteps = sigmas * np.float32(train_steps)  # (num_train_timesteps,) until `set_timesteps`
        self.sigmas = sigmas
        self.sigma_min = float(sigmas[-1])
        self.sigma_max = float(sigmas[0])
        self.num_inference_steps = None
        self._shift = self.config.shift
        self._step_index = None
        self._begin_index = None

    @classmethod
    def from_config(cls, config: Mapping | SchedulerConfig) -> "FlowMatchEulerScheduler":
        """A scheduler from a config dict (the JSON's contents) or another scheduler's `config`."""
        return cls(SchedulerConfig.from_dict(config))

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, subfolder: str = "scheduler") -> "FlowMatchEulerScheduler":
        """The scheduler of a converted folder, read from `model_dir / subfolder / scheduler_config.json`."""
        model_dir = Path(model_dir)
        config_path = model_dir / subfolder / SCHEDULER_CONFIG
        config = read_json(config_path, model_dir=model_dir)
        if config.get("_class_name", SCHEDULER_CLASS) != SCHEDULER_CLASS:
            raise ValueError(f"`{config_path}` names the scheduler {config['_class_name']!r}; only {SCHEDULER_CLASS!r} is ported to numpy.")
        try:
            return cls.from_config(config)
        except (TypeError, ValueError) as error:
            raise ValueError(incomplete_model_error(config_path, model_dir, f"could not be read ({error})")) from error

    # -- State ---------------------------------------------------------------------------------------------

    @property
    def shift(self) -> float:
        return self._shift

    def set_shift(self, shift: float) -> None:
        self._shift = shift

    @property
    def step_index(self) -> int | None:
        """The index of the next `step`'s sigma; it grows by one per step."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The first step's index, set by image-to-image (`set_begin_index`) to start later in the schedule."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # -- The schedule --------------------------------------------------------------------------------------

    def time_shift(self, mu: float, sigma: float, t: np.ndarray) -> np.ndarray:
        """The dynamic (per image size) shift of the sigmas `t`."""
        if self.config.time_shift_type == "exponential":
            return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)
        return mu / (mu + (1 / t - 1) ** sigma)

    def stretch_shift_to_terminal(self, t: np.ndarray) -> np.ndarray:
        """Stretch the schedule so it ends at `config.shift_terminal`."""
        one_minus_z = 1 - t
        scale_factor = one_minus_z[-1] / (1 - self.config.shift_terminal)
        return 1 - (one_minus_z / scale_factor)

    def set_timesteps(self, num_inference_steps: int | None = None, *, sigmas=None, mu: float | None = None, timesteps=None, device=None) -> None:
        """Set `timesteps` (num_inference_steps,) and `sigmas` (num_inference_steps + 1,) for a denoising run.

        `sigmas` or `timesteps` replace the evenly spaced default; `mu` is the dynamic shift, required when
        `config.use_dynamic_shifting`. `device` is accepted for diffusers' callers and ignored (numpy on CPU).
        """
        # Adapted from diffusers FlowMatchEulerDiscreteScheduler.set_timesteps
        config = self.config
        if config.use_dynamic_shifting and mu is None:
            raise ValueError("`mu` must be passed when `use_dynamic_shifting` is set to be `True`")
        if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
            raise ValueError("`sigmas` and `timesteps` should have the same length")
        if num_inference_steps is not None:
            if (sigmas is not None and len(sigmas) != num_inference_steps) or (timesteps is not None and len(timesteps) != num_inference_steps):
                raise ValueError("`sigmas` and `timesteps` should have the same length as num_inference_steps, if `num_inference_steps` is provided")
        elif sigmas is None and timesteps is None:
            raise ValueError("Pass `num_inference_steps`, `sigmas` or `timesteps`.")
        else:
            num_inference_steps = len(sigmas) if sigmas is not None else len(timesteps)
        self.num_inference_steps = num_inference_steps

        # 1. Default sigmas: evenly spaced timesteps (float64, as diffusers computes them)
        is_timesteps_provided = timesteps is not None
        if is_timesteps_provided:
            timesteps = np.array(timesteps).astype(np.float32)
        if sigmas is None:
            if timesteps is None:
                timesteps = np.linspace(self.sigma_max * config.num_train_timesteps, self.sigma_min * config.num_train_timesteps, num_inference_steps)
            sigmas = timesteps / config.num_train_timesteps
        else:
            sigmas = np.array(sigmas).astype(np.float32)
            num_inference_steps = len(sigmas)

        # 2. Shift: by `mu` for this image size, or by the static `shift`
        if config.use_dynamic_shifting:
            sigmas = self.time_shift(mu, 1.0, sigmas)
        else:
            sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)

        # 3. Stretch to end at `shift_terminal`
        if config.shift_terminal:
            sigmas = self.stretch_shift_to_terminal(sigmas)

        # 4. Karras, exponential or beta spacing
        if config.use_karras_sigmas:
            sigmas = self._convert_to_karras(sigmas, num_inference_steps=num_inference_steps)
        elif config.use_exponential_sigmas:
            sigmas = self._convert_to_exponential(sigmas, num_inference_steps=num_inference_steps)
        elif config.use_beta_sigmas:
            sigmas = self._convert_to_beta(sigmas, num_inference_steps=num_inference_steps)

        # 5. float32 timesteps, 6. the terminal sigma appended (1 when inverted)
        sigmas = np.asarray(sigmas).astype(np.float32)
        timesteps = timesteps.astype(np.float32) if is_timesteps_provided else sigmas * np.float32(config.num_train_timesteps)
        if config.invert_sigmas:
            sigmas = np.float32(1.0) - sigmas
            timesteps = sigmas * np.float32(config.num_train_timesteps)
            sigmas = np.concatenate([sigmas, np.ones(1, dtype=np.float32)])
        else:
            sigmas = np.concatenate([sigmas, np.zeros(1, dtype=np.float32)])
        self.timesteps = timesteps
        self.sigmas = sigmas
        self._step_index = None
        self._begin_index = None

    @staticmethod
    def _sigma_range(in_sigmas: np.ndarray) -> tuple[float, float]:
        return float(in_sigmas[-1]), float(in_sigmas[0])

    def _convert_to_karras(self, in_sigmas: np.ndarray, *, num_inference_steps: int) -> np.ndarray:
        # Adapted from diffusers EulerDiscreteScheduler._convert_to_karras
        sigma_min, sigma_max = self._sigma_range(in_sigmas)
        rho = 7.0  # the paper's value
        ramp = np.linspace(0, 1, num_inference_steps)
        min_inv_rho = sigma_min ** (1 / rho)
        max_inv_rho = sigma_max ** (1 / rho)
        return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho

    def _convert_to_exponential(self, in_sigmas: np.ndarray, *, num_inference_steps: int) -> np.ndarray:
        # Adapted from diffusers EulerDiscreteScheduler._convert_to_exponential
        sigma_min, sigma_max = self._sigma_range(in_sigmas)
        return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_inference_steps))

    def _convert_to_beta(self, in_sigmas: np.ndarray, *, num_inference_steps: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
        # Adapted from diffusers EulerDiscreteScheduler._convert_to_beta
        try:
            import scipy.stats
        except ImportError as error:
            raise ImportError("`use_beta_sigmas` needs scipy: `pip install scipy`.") from error
        sigma_min, sigma_max = self._sigma_range(in_sigmas)
        ppfs = [scipy.stats.beta.ppf(timestep, alpha, beta) for timestep in 1 - np.linspace(0, 1, num_inference_steps)]
        return np.array([sigma_min + ppf * (sigma_max - sigma_min) for ppf in ppfs])

    # -- Steps ---------------------------------------------------------------------------------------------

    def index_for_timestep(self, timestep, schedule_timesteps: np.ndarray | None = None) -> int:
        """The index of `timestep` in the schedule (the second match if it repeats, as diffusers picks)."""
        schedule_timesteps = self.timesteps if schedule_timesteps is None else schedule_timesteps
        indices = np.flatnonzero(schedule_timesteps == np.asarray(timestep, dtype=schedule_timesteps.dtype))
        if len(indices) == 0:
            raise ValueError(f"`timestep` {float(timestep)} is not one of the scheduler's timesteps; pass one of `scheduler.timesteps`.")
        return int(indices[1 if len(indices) > 1 else 0])

    def scale_noise(self, sample: np.ndarray, timestep, noise: np.ndarray) -> np.ndarray:
        """The forward process: `sample` noised to the level of `timestep` (one per batch item), sigma * noise +
        (1 - sigma) * sample. Image-to-image starts from it."""
        # Adapted from diffusers FlowMatchEulerDiscreteScheduler.scale_noise
        sample = np.asarray(sample)
        sigmas = self.sigmas.astype(sample.dtype)
        timestep = np.atleast_1d(np.asarray(timestep, dtype=np.float32))
        if self.begin_index is None:
            step_indices = [self.index_for_timestep(t) for t in timestep]
        elif self.step_index is not None:
            step_indices = [self.step_index] * timestep.shape[0]  # after the first step (inpainting)
        else:
            step_indices = [self.begin_index] * timestep.shape[0]  # before the first step (image-to-image)
        sigma = sigmas[step_indices].reshape((-1,) + (1,) * (sample.ndim - 1))  # (B, 1, 1, 1)
        return sigma * np.asarray(noise, dtype=sample.dtype) + (1.0 - sigma) * sample

    def step(
        self,
        model_output: np.ndarray,
        timestep,
        sample: np.ndarray,
        *,
        generator=None,
        per_token_timesteps=None,
        return_dict: bool | None = None,
    ):
        """One Euler step from `sample` at `timestep` to the next sigma along the predicted flow `model_output`.

        Returns the new sample (float32, `model_output`'s shape); `return_dict=False` returns `(prev_sample,)` and
        `return_dict=True` a `FlowMatchEulerSchedulerOutput`, as diffusers' `step` does. `generator` (see
        `sd3_noise.randn_tensor`) draws the noise of `config.stochastic_sampling`.
        """
        # Adapted from diffusers FlowMatchEulerDiscreteScheduler.step
        if np.issubdtype(np.asarray(timestep).dtype, np.integer):
            raise ValueError(
                "Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to `step()` is not supported. "
                "Make sure to pass one of the `scheduler.timesteps` as a timestep."
            )
        if per_token_timesteps is not None:
            raise NotImplementedError("`per_token_timesteps` of diffusers' FlowMatchEulerDiscreteScheduler.step is not ported (SD3 does not use it).")
        if self.step_index is None:
            self._step_index = self.index_for_timestep(timestep) if self.begin_index is None else self.begin_index
        model_output = np.asarray(model_output)
        sample = np.asarray(sample, dtype=np.float32)  # upcast, as diffusers does
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        if self.config.stochastic_sampling:
            x0 = sample - sigma * model_output
            noise = randn_tensor(sample.shape, generator=generator)
            prev_sample = (1.0 - sigma_next) * x0 + sigma_next * noise
        else:
            prev_sample = sample + (sigma_next - sigma) * model_output
        self._step_index += 1
        prev_sample = prev_sample.astype(model_output.dtype, copy=False)
        if return_dict is None:
            return prev_sample
        return FlowMatchEulerSchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)
