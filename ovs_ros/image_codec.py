"""sensor_msgs Image / CompressedImage <-> numpy, with the checks a robot's camera stream needs.

Everything here works on any object with the message's field names (`encoding`, `height`, `width`, `step`,
`is_bigendian`, `data`; `format`, `data` for compressed), so rclpy messages, rosbags' dataclasses and
mcap-ros2-support's decoded messages all decode the same way. Only `to_image_msg` imports sensor_msgs.

The cheap checks (`check_image_msg`, O(1): encoding, size, step and buffer length) run in the subscription
callback, so a malformed frame never displaces a good one in the node's one-frame slot; the conversion
(`image_msg_to_rgb`) runs on the worker thread.
"""
from __future__ import annotations

import struct
import sys
from typing import Any, Optional, Tuple

import numpy as np

# encoding -> bytes per pixel. Besides 8-bit RGB/BGR/mono: packed YUV 4:2:2 (ROS "yuv422" is UYVY,
# "yuv422_yuy2" is YUYV), Bayer mosaics (demosaiced by OpenCV), and 16-bit images, scaled to 8 bits by keeping the
# high byte (v >> 8: 0..65535 -> 0..255; a depth-like mono16 with small values therefore comes out dark).
RAW_ENCODINGS = {
    "rgb8": 3,
    "bgr8": 3,
    "rgba8": 4,
    "bgra8": 4,
    "mono8": 1,
    "yuv422": 2,
    "uyvy": 2,
    "yuv422_yuy2": 2,
    "yuyv": 2,
    "bayer_rggb8": 1,
    "bayer_bggr8": 1,
    "bayer_gbrg8": 1,
    "bayer_grbg8": 1,
    "mono16": 2,
    "rgb16": 6,
    "bgr16": 6,
    "rgba16": 8,
    "bgra16": 8,
}
_UYVY = ("yuv422", "uyvy")
_YUYV = ("yuv422_yuy2", "yuyv")
# ROS Bayer names -> OpenCV's (OpenCV names the pattern by the second row's first two pixels: cv_bridge's table).
_BAYER_TO_CV = {"bayer_rggb8": "BayerBG", "bayer_bggr8": "BayerRG", "bayer_gbrg8": "BayerGR",
                "bayer_grbg8": "BayerGB"}
# Output encodings: numpy dtype and channels (REP-118 / sensor_msgs/image_encodings.hpp names).
OUTPUT_ENCODINGS = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
    "8UC1": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
    "32SC1": (np.int32, 1),
    "32FC1": (np.float32, 1),
}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")
DEFAULT_MAX_PIXELS = 4096 * 4096
_HOST_BIG_ENDIAN = sys.byteorder == "big"


class ImageDecodeError(ValueError):
    """A message that cannot become an RGB frame. `reason` is a short counter key (see `REASONS`)."""

    REASONS = ("encoding", "empty", "too_large", "size_mismatch", "corrupt")

    def __init__(self, reason: str, message: str) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        super().__init__(message)
        self.reason = reason


def _buffer_len(data: Any) -> int:
    try:
        return len(data)
    except TypeError:
        return memoryview(data).nbytes


def check_image_msg(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """O(1) validation of a raw `sensor_msgs/Image`; raises `ImageDecodeError` naming what is wrong.

    Order matters: the size limit is checked before the buffer length, so an 8k x 8k header is refused as
    `too_large` whatever its data holds.
    """
    encoding = str(msg.encoding).strip().lower()
    if encoding not in RAW_ENCODINGS:
        raise ImageDecodeError(
            "encoding", f"encoding {msg.encoding!r} not supported (use one of {sorted(RAW_ENCODINGS)})")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageDecodeError("empty", f"zero-sized image {width}x{height}")
    if height * width > max_pixels:
        raise ImageDecodeError(
            "too_large", f"image {width}x{height} has {height * width} pixels, more than max_image_pixels={max_pixels}")
    row = width * RAW_ENCODINGS[encoding]
    if step < row:
        raise ImageDecodeError("size_mismatch", f"step {step} < width*channels {row} for {encoding} {width}x{height}")
    if encoding in _UYVY + _YUYV and width % 2:
        raise ImageDecodeError("size_mismatch", f"{encoding} needs an even width, got {width}")
    n = _buffer_len(msg.data)
    if n != step * height:
        raise ImageDecodeError(
            "size_mismatch", f"data has {n} bytes, expected step*height = {step}*{height} = {step * height}")


def image_msg_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A raw `sensor_msgs/Image` in any of `RAW_ENCODINGS` as a contiguous HxWx3 uint8 RGB array."""
    check_image_msg(msg, max_pixels)
    encoding = str(msg.encoding).strip().lower()
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    channels = RAW_ENCODINGS[encoding]
    buf = np.frombuffer(msg.data, dtype=np.uint8).reshape(height, step)
    pixels = buf[:, : width * channels].reshape(height, width, channels)
    if channels in (6, 8) or encoding == "mono16":
        return _sixteen_bit_to_rgb(pixels, encoding, bool(msg.is_bigendian))
    if encoding in _UYVY + _YUYV or encoding in _BAYER_TO_CV:
        import cv2

        if encoding in _BAYER_TO_CV:
            code = getattr(cv2, f"COLOR_{_BAYER_TO_CV[encoding]}2RGB")
            return np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(pixels[:, :, 0]), code))
        code = cv2.COLOR_YUV2RGB_UYVY if encoding in _UYVY else cv2.COLOR_YUV2RGB_YUYV
        return np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(pixels), code))
    if encoding == "rgb8":
        return np.ascontiguousarray(pixels)
    if encoding == "bgr8":
        return np.ascontiguousarray(pixels[:, :, ::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(pixels[:, :, :3])
    if encoding == "bgra8":
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))  # mono8


def _sixteen_bit_to_rgb(pixels: np.ndarray, encoding: str, big_endian: bool) -> np.ndarray:
    """mono16 / rgb16 / bgr16 / rgba16 / bgra16 -> 8-bit RGB by the high byte."""
    height, width = pixels.shape[:2]
    dtype = np.dtype(np.uint16).newbyteorder(">" if big_endian else "<")
    values = np.ascontiguousarray(pixels).view(dtype).reshape(height, width, -1)
    eight = (values >> 8).astype(np.uint8)
    if encoding == "mono16":
        return np.ascontiguousarray(np.repeat(eight, 3, axis=2))
    if encoding.startswith("bgr"):
        return np.ascontiguousarray(eight[:, :, 2::-1])
    return np.ascontiguousarray(eight[:, :, :3])


def _peek_compressed_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from a PNG IHDR or a JPEG SOF marker without decoding; None if not found."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data[:2] == b"\xff\xd8":
        i, n = 2, len(data)
        while i + 9 < n:
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            seg_len = (data[i + 2] << 8) | data[i + 3]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                height, width = struct.unpack(">HH", data[i + 5: i + 9])
                return width, height
            i += 2 + seg_len
    return None


# The subscription callback looks at most this far into a CompressedImage: the PNG IHDR or a JPEG SOF after the
# usual APP segments are within it; a size hidden further in is left to the worker's full check.
COMPRESSED_PEEK_BYTES = 1 << 16


def check_compressed_msg(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS, peek_bytes: Optional[int] = None) -> None:
    """The cheap checks of a `sensor_msgs/CompressedImage` (no decode): data present, format jpeg/png, a PNG/JPEG
    header whose size is non-zero and within `max_pixels`. With `peek_bytes` only that much is read (the node's
    subscription callback: a bad frame must not displace a good one from the one-frame slot), and a JPEG whose size
    marker lies further in passes to the full check. Raises `ImageDecodeError`."""
    size_bytes = len(msg.data)
    if size_bytes == 0:
        raise ImageDecodeError("empty", f"compressed image ({msg.format!r}) has no data")
    fmt = str(msg.format).lower()
    if fmt and not any(f in fmt for f in COMPRESSED_FORMATS):
        raise ImageDecodeError(
            "encoding",
            f"compressed format {msg.format!r} not supported (jpeg or png, e.g. 'rgb8; jpeg compressed bgr8')")
    partial = peek_bytes is not None and size_bytes > peek_bytes
    head = bytes(msg.data[:peek_bytes]) if partial else bytes(msg.data)
    size = _peek_compressed_size(head)
    if size is None:
        known = head[:8] == b"\x89PNG\r\n\x1a\n" or head[:2] == b"\xff\xd8"
        if partial and known:
            return  # a JPEG whose size marker is further in than we peek: the worker's full check decides
        what = "has no readable image header" if known else "is neither a PNG nor a JPEG stream"
        raise ImageDecodeError("corrupt", f"compressed data ({size_bytes} bytes) {what}")
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageDecodeError("empty", f"zero-sized compressed image {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too_large", f"image {width}x{height} has {width * height} pixels, more than max_image_pixels={max_pixels}")


def compressed_msg_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A `sensor_msgs/CompressedImage` (jpeg or png, as image_transport's compressed plugin writes them) as HxWx3
    uint8 RGB. The size is read from the file header first, so a huge image is refused before it is decoded."""
    import cv2

    check_compressed_msg(msg, max_pixels)
    data = bytes(msg.data)
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if decoded is None or decoded.size == 0:
        raise ImageDecodeError("corrupt", f"OpenCV could not decode the {len(data)}-byte {msg.format!r} image")
    return np.ascontiguousarray(decoded[:, :, ::-1])


def rgb_to_compressed_bytes(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """Encode HxWx3 uint8 RGB as JPEG or PNG bytes (for CompressedImage.data)."""
    import cv2

    ext = ".png" if fmt == "png" else ".jpg"
    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[:, :, ::-1]), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    return buf.tobytes()


def fill_image_msg(msg: Any, array: np.ndarray, encoding: str) -> Any:
    """Fill `msg` (a sensor_msgs/Image) from `array`; the caller sets the header. Returns `msg`."""
    if encoding not in OUTPUT_ENCODINGS:
        raise ValueError(f"unsupported output encoding {encoding!r}; known: {sorted(OUTPUT_ENCODINGS)}")
    dtype, channels = OUTPUT_ENCODINGS[encoding]
    array = np.asarray(array)
    if array.dtype != dtype:
        raise ValueError(f"{encoding} needs dtype {np.dtype(dtype).name}, got {array.dtype}")
    if channels == 1:
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim != 2:
            raise ValueError(f"{encoding} needs an [H, W] array, got shape {array.shape}")
    elif array.ndim != 3 or array.shape[2] != channels:
        raise ValueError(f"{encoding} needs an [H, W, {channels}] array, got shape {array.shape}")
    array = np.ascontiguousarray(array)
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = _HOST_BIG_ENDIAN if array.itemsize > 1 else False
    msg.step = int(array.shape[1] * channels * array.itemsize)
    msg.data = array.tobytes()
    return msg


def to_image_msg(array: np.ndarray, encoding: str, header: Any = None) -> Any:
    """A new sensor_msgs/Image holding `array` with `header` (copied by reference)."""
    from sensor_msgs.msg import Image

    msg = fill_image_msg(Image(), array, encoding)
    if header is not None:
        msg.header = header
    return msg


def image_msg_to_numpy(msg: Any) -> np.ndarray:
    """Any image in `OUTPUT_ENCODINGS` as an array ([H, W] for one channel) in host byte order; for tests and tools."""
    encoding = str(msg.encoding)
    if encoding not in OUTPUT_ENCODINGS:
        raise ImageDecodeError("encoding", f"encoding {encoding!r} not supported here")
    dtype, channels = OUTPUT_ENCODINGS[encoding]
    dt = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row = width * channels * dt.itemsize
    if height <= 0 or width <= 0 or step < row or _buffer_len(msg.data) != step * height:
        raise ImageDecodeError("size_mismatch", f"{encoding} {width}x{height} step {step}: bad buffer size")
    buf = np.frombuffer(msg.data, dtype=np.uint8).reshape(height, step)[:, :row]
    out = np.ascontiguousarray(buf).view(dt).reshape(height, width, channels).astype(dtype, copy=False)
    return out[:, :, 0] if channels == 1 else out
