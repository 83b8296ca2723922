"""The control-image preprocessors (no model needed): canny edges as OpenCV makes them, blur, depth maps."""

import cv2
import numpy as np
import pytest
from PIL import Image

import sd3_helper
from sd3_openvino.runtime.control_images import control_image_for


def photo() -> Image.Image:
    picture = np.zeros((40, 60, 3), dtype=np.uint8)
    picture[10:30, 15:45] = (240, 200, 30)  # a bright rectangle: four edges
    return Image.fromarray(picture)


def test_canny_edges_are_opencvs_on_the_grey_image():
    edges = sd3_helper.canny_edges(photo(), low_threshold=50, high_threshold=150)
    expected = cv2.Canny(np.asarray(photo().convert("L")), 50, 150)
    assert edges.mode == "RGB" and edges.size == (60, 40)
    np.testing.assert_array_equal(np.asarray(edges)[..., 0], expected)
    assert np.asarray(edges).max() == 255 and np.asarray(edges)[20, 30].max() == 0  # edges on the border, none inside


def test_blur_and_depth():
    blurred = sd3_helper.blurred(photo(), radius=3)
    assert blurred.size == (60, 40) and 0 < np.asarray(blurred)[10, 30, 0] < 240  # the edge is soft
    depth = np.linspace(0.5, 3.0, 60 * 40, dtype=np.float32).reshape(40, 60)
    image = sd3_helper.depth_map(depth)
    assert image.mode == "RGB" and np.asarray(image).min() == 0 and np.asarray(image).max() == 255
    grey = Image.fromarray(np.full((8, 8), 90, dtype=np.uint8))
    assert np.unique(np.asarray(sd3_helper.depth_map(grey))).tolist() == [90]  # a flat map stays as it is
    assert control_image_for(photo(), preprocessor="none").mode == "RGB"


BAD = {
    "thresholds": (lambda: sd3_helper.canny_edges(photo(), low_threshold=200, high_threshold=100), ValueError, "0 <= low < high <= 1000"),
    "not-an-image": (lambda: sd3_helper.canny_edges("photo.png"), TypeError, "has to be a PIL image or an .* uint8 numpy array but is str"),
    "float-rgb": (lambda: sd3_helper.blurred(np.zeros((4, 4, 3))), TypeError, "of shape \\(4, 4, 3\\) and dtype float64"),
    "radius": (lambda: sd3_helper.blurred(photo(), radius=-1), ValueError, "`radius` has to be a finite number of pixels >= 0"),
    "depth-nan": (lambda: sd3_helper.depth_map(np.full((4, 4), np.nan)), ValueError, "NaN or infinite"),
    "preprocessor": (lambda: control_image_for(photo(), preprocessor="pose"), ValueError, "one of \\['canny', 'blur', 'depth', 'none'\\]"),
}


@pytest.mark.parametrize("call, error, message", BAD.values(), ids=BAD.keys())
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()
