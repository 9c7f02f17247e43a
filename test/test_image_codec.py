"""ovs_ros.image_codec: decoding every supported encoding, refusing every malformed message with the right reason."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ovs_ros.image_codec import (
    ImageDecodeError, check_image_msg, compressed_msg_to_rgb, fill_image_msg, image_msg_to_numpy, image_msg_to_rgb,
    rgb_to_compressed_bytes)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def raw(array: np.ndarray, encoding: str, pad: int = 0) -> SimpleNamespace:
    """A duck-typed sensor_msgs/Image, rows padded by `pad` bytes (step > width * channels)."""
    h, w = array.shape[:2]
    rows = array.reshape(h, -1)
    if pad:
        rows = np.concatenate([rows, np.full((h, pad), 255, np.uint8)], axis=1)
    return SimpleNamespace(encoding=encoding, height=h, width=w, step=rows.shape[1], is_bigendian=0,
                           data=rows.tobytes(), header=None)


@pytest.mark.parametrize("pad", [0, 3])
def test_raw_encodings_to_rgb(pad):
    alpha = np.full((5, 7, 1), 9, np.uint8)
    cases = {
        "rgb8": RGB,
        "bgr8": RGB[:, :, ::-1],
        "rgba8": np.concatenate([RGB, alpha], axis=2),
        "bgra8": np.concatenate([RGB[:, :, ::-1], alpha], axis=2),
    }
    for encoding, array in cases.items():
        out = image_msg_to_rgb(raw(np.ascontiguousarray(array), encoding, pad))
        assert out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, RGB, err_msg=encoding)
    mono = RGB[:, :, 0].copy()
    out = image_msg_to_rgb(raw(mono, "mono8", pad))
    np.testing.assert_array_equal(out, np.repeat(mono[:, :, None], 3, axis=2))


def _bt601_yuv(rgb: np.ndarray) -> np.ndarray:
    """Video-range BT.601 YUV (what UYVY/YUYV cameras send), per pixel, as float."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return np.stack([y, u, v], axis=-1)


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy", "yuv422_yuy2", "yuyv"])
def test_packed_yuv422_to_rgb(encoding):
    """Flat colours in 2x2 blocks (chroma is shared by a pixel pair): decoded within rounding of BT.601."""
    colours = np.array([[[200, 50, 20], [10, 180, 90]], [[30, 40, 220], [128, 128, 128]]], np.uint8)
    rgb = np.repeat(np.repeat(colours, 2, axis=0), 2, axis=1)  # 4x4
    yuv = np.round(_bt601_yuv(rgb)).astype(np.uint8)
    packed = np.zeros((4, 4, 2), np.uint8)
    luma, chroma = (1, 0) if encoding in ("yuv422", "uyvy") else (0, 1)
    packed[..., luma] = yuv[..., 0]
    packed[:, 0::2, chroma] = yuv[:, 0::2, 1]
    packed[:, 1::2, chroma] = yuv[:, 0::2, 2]
    out = image_msg_to_rgb(raw(packed, encoding))
    assert out.shape == (4, 4, 3)
    np.testing.assert_allclose(out.astype(int), rgb.astype(int), atol=3)


@pytest.mark.parametrize("encoding, pattern", [
    ("bayer_rggb8", ("R", "G", "G", "B")), ("bayer_bggr8", ("B", "G", "G", "R")),
    ("bayer_gbrg8", ("G", "B", "R", "G")), ("bayer_grbg8", ("G", "R", "B", "G")),
])
def test_bayer_to_rgb(encoding, pattern):
    """A flat colour mosaiced in each ROS pattern comes back as that colour (inside, away from the border)."""
    colour = {"R": 200, "G": 60, "B": 20}
    mosaic = np.zeros((8, 8), np.uint8)
    for (dy, dx), channel in zip(((0, 0), (0, 1), (1, 0), (1, 1)), pattern):
        mosaic[dy::2, dx::2] = colour[channel]
    out = image_msg_to_rgb(raw(mosaic, encoding))
    np.testing.assert_array_equal(out[2:6, 2:6], np.broadcast_to(np.array([200, 60, 20], np.uint8), (4, 4, 3)))


@pytest.mark.parametrize("big_endian", [False, True])
def test_sixteen_bit_encodings_keep_the_high_byte(big_endian):
    values = RNG.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    order = ">" if big_endian else "<"
    expected = (values >> 8).astype(np.uint8)
    for encoding, array, want in (
        ("rgb16", values, expected),
        ("bgr16", values[:, :, ::-1], expected),
        ("rgba16", np.concatenate([values, values[:, :, :1]], axis=2), expected),
        ("bgra16", np.concatenate([values[:, :, ::-1], values[:, :, :1]], axis=2), expected),
        ("mono16", values[:, :, 0], np.repeat(expected[:, :, :1], 3, axis=2)),
    ):
        data = np.ascontiguousarray(array).astype(np.dtype(np.uint16).newbyteorder(order))
        msg = raw(data.view(np.uint8).reshape(5, 7, -1), encoding)
        msg.is_bigendian = int(big_endian)
        np.testing.assert_array_equal(image_msg_to_rgb(msg), want, err_msg=encoding)


def test_works_on_real_messages_and_arrays():
    pytest.importorskip("sensor_msgs.msg")
    from sensor_msgs.msg import Image

    msg = fill_image_msg(Image(), RGB, "rgb8")
    np.testing.assert_array_equal(image_msg_to_rgb(msg), RGB)
    ns = raw(RGB, "rgb8")
    ns.data = np.frombuffer(ns.data, np.uint8)  # rosbags gives numpy arrays
    np.testing.assert_array_equal(image_msg_to_rgb(ns), RGB)


@pytest.mark.parametrize("mutate, reason", [
    (lambda m: setattr(m, "encoding", "32FC1"), "encoding"),
    (lambda m: setattr(m, "encoding", "16UC1"), "encoding"),
    (lambda m: setattr(m, "encoding", "yuv422"), "size_mismatch"),  # odd width (7): 4:2:2 pairs need an even one
    (lambda m: setattr(m, "height", 0), "empty"),
    (lambda m: setattr(m, "width", 0), "empty"),
    (lambda m: setattr(m, "step", 20), "size_mismatch"),
    (lambda m: setattr(m, "data", m.data[:-1]), "size_mismatch"),
    (lambda m: setattr(m, "data", m.data + b"x"), "size_mismatch"),
    (lambda m: (setattr(m, "height", 8192), setattr(m, "width", 8192)), "too_large"),
])
def test_malformed_raw_refused(mutate, reason):
    msg = raw(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ImageDecodeError) as info:
        image_msg_to_rgb(msg)
    assert info.value.reason == reason
    with pytest.raises(ImageDecodeError):
        check_image_msg(msg)


def test_max_pixels_is_a_parameter():
    check_image_msg(raw(RGB, "rgb8"), max_pixels=35)
    with pytest.raises(ImageDecodeError, match="max_image_pixels=34"):
        check_image_msg(raw(RGB, "rgb8"), max_pixels=34)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_roundtrip(fmt):
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[:, :24] = (200, 30, 60)
    smooth[:, 24:] = (10, 220, 90)
    data = rgb_to_compressed_bytes(smooth, fmt)
    out = compressed_msg_to_rgb(SimpleNamespace(format=f"rgb8; {fmt} compressed bgr8", data=data))
    assert out.shape == smooth.shape
    if fmt == "png":
        np.testing.assert_array_equal(out, smooth)
    else:
        assert np.abs(out.astype(int) - smooth).mean() < 4


def test_compressed_refusals():
    png = rgb_to_compressed_bytes(RGB, "png")
    bad = [
        (SimpleNamespace(format="jpeg", data=b""), "empty"),
        (SimpleNamespace(format="theora", data=png), "encoding"),
        (SimpleNamespace(format="jpeg", data=b"\x00not an image" * 10), "corrupt"),
        (SimpleNamespace(format="png", data=png[:40]), "corrupt"),
    ]
    for msg, reason in bad:
        with pytest.raises(ImageDecodeError) as info:
            compressed_msg_to_rgb(msg)
        assert info.value.reason == reason, msg.format
    with pytest.raises(ImageDecodeError) as info:
        compressed_msg_to_rgb(SimpleNamespace(format="png", data=png), max_pixels=10)
    assert info.value.reason == "too_large"


def test_huge_compressed_refused_before_decoding():
    """An 8k x 8k JPEG header is refused from its SOF marker without allocating the image."""
    small = rgb_to_compressed_bytes(np.zeros((8, 8, 3), np.uint8), "jpeg")
    i = small.index(b"\xff\xc0")
    huge = small[: i + 5] + (8192).to_bytes(2, "big") + (8192).to_bytes(2, "big") + small[i + 9:]
    with pytest.raises(ImageDecodeError) as info:
        compressed_msg_to_rgb(SimpleNamespace(format="jpeg", data=huge))
    assert info.value.reason == "too_large" and "8192x8192" in str(info.value)


@pytest.mark.parametrize("encoding, array", [
    ("32SC1", np.arange(-6, 6, dtype=np.int32).reshape(3, 4)),
    ("16UC1", np.array([[0, 1, 65535]], dtype=np.uint16)),
    ("rgb8", RGB),
    ("mono8", RGB[:, :, 1].copy()),
])
def test_fill_and_read_back(encoding, array):
    msg = fill_image_msg(SimpleNamespace(), array, encoding)
    assert msg.step == array.shape[1] * (array.shape[2] if array.ndim == 3 else 1) * array.itemsize
    np.testing.assert_array_equal(image_msg_to_numpy(msg), array)


def test_big_endian_readback():
    array = np.array([[1, 256, -2]], dtype=np.int32)
    msg = SimpleNamespace(encoding="32SC1", height=1, width=3, step=12, is_bigendian=1,
                          data=array.astype(">i4").tobytes())
    np.testing.assert_array_equal(image_msg_to_numpy(msg), array)


def test_fill_refuses_wrong_dtype_or_shape():
    with pytest.raises(ValueError, match="dtype"):
        fill_image_msg(SimpleNamespace(), np.zeros((2, 2), np.int64), "32SC1")
    with pytest.raises(ValueError, match="shape"):
        fill_image_msg(SimpleNamespace(), np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(ValueError, match="unsupported"):
        fill_image_msg(SimpleNamespace(), np.zeros((2, 2), np.uint8), "yuv422")
