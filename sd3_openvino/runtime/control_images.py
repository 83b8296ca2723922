"""Control images for the SD3 ControlNets, made without another model: canny edges, blur, a depth map given by the user.

Canny uses OpenCV (`opencv-python-headless`): the canny ControlNets (InstantX's, Stability's) were trained on
`cv2.Canny` edges, and diffusers' examples make them with it, so the same call gives the edges the model knows.
scikit-image's canny smooths and thresholds differently. Blur (for the tile / blur ControlNets) is Pillow's Gaussian
blur. A depth map comes from a depth model the user runs (Depth Anything, MiDaS); `depth_map` only turns a grey
image or array into the RGB control image the ControlNet reads.

Each returns an RGB PIL image of the input's size. Imports numpy and Pillow; OpenCV inside `canny_edges`.
"""

import numpy as np

CONTROL_PREPROCESSORS = ("canny", "blur", "depth", "none")  # the demo's choices


def _as_pil(image, *, name: str = "image"):
    """A PIL image from a PIL image or an (H, W) / (H, W, 3) uint8 array, or a TypeError naming `name`."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray) and image.ndim in (2, 3) and image.dtype == np.uint8:
        return Image.fromarray(image)
    raise TypeError(
        f"`{name}` has to be a PIL image or an (H, W) or (H, W, 3) uint8 numpy array but is {type(image).__name__}"
        f"{f' of shape {image.shape} and dtype {image.dtype}' if isinstance(image, np.ndarray) else ''}."
    )


def canny_edges(image, *, low_threshold: int = 100, high_threshold: int = 200):
    """White edges on black (`cv2.Canny` with these hysteresis thresholds on the grey image), as an RGB PIL image of
    `image`'s size. Lower thresholds keep more edges; the canny ControlNets' examples use 100 and 200."""
    import cv2

    if not 0 <= low_threshold < high_threshold <= 1000:
        raise ValueError(
            f"`low_threshold` and `high_threshold` have to satisfy 0 <= low < high <= 1000 but are {low_threshold} and {high_threshold}."
        )
    grey = np.asarray(_as_pil(image).convert("L"))
    edges = cv2.Canny(grey, low_threshold, high_threshold)
    from PIL import Image

    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def blurred(image, *, radius: float = 8.0):
    """`image` under a Gaussian blur of `radius` pixels (the input of tile / blur ControlNets), as an RGB PIL image."""
    from PIL import ImageFilter

    if not np.isfinite(radius) or radius < 0:
        raise ValueError(f"`radius` has to be a finite number of pixels >= 0 but is {radius}.")
    return _as_pil(image).convert("RGB").filter(ImageFilter.GaussianBlur(radius=radius))


def depth_map(depth, *, normalize: bool = True):
    """A depth estimate (a grey PIL image, or an (H, W) array of any float or int type: near is bright, as depth
    models output it) as the RGB control image of depth ControlNets; `normalize` stretches it to 0-255."""
    from PIL import Image

    if isinstance(depth, np.ndarray) and depth.ndim == 2 and depth.dtype != np.uint8:
        values = depth.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError("`depth` holds NaN or infinite values; pass a finite depth map.")
        low, high = values.min(), values.max()
        values = (values - low) / (high - low) if high > low else np.zeros_like(values)
        grey = (values * 255).round().astype(np.uint8)
    else:
        grey = np.asarray(_as_pil(depth, name="depth").convert("L"))
        if normalize and grey.max() > grey.min():
            grey = ((grey.astype(np.float64) - grey.min()) / (grey.max() - grey.min()) * 255).round().astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1))


def control_image_for(image, *, preprocessor: str, **options):
    """`image` through the named `preprocessor` ("canny", "blur", "depth", or "none" to use it as it is)."""
    if preprocessor not in CONTROL_PREPROCESSORS:
        raise ValueError(f"`preprocessor` has to be one of {list(CONTROL_PREPROCESSORS)} but is {preprocessor!r}.")
    if preprocessor == "canny":
        return canny_edges(image, **options)
    if preprocessor == "blur":
        return blurred(image, **options)
    if preprocessor == "depth":
        return depth_map(image, **options)
    return _as_pil(image).convert("RGB")
