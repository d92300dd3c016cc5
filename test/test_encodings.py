"""Image, label image, depth, JPEG, CompressedImage and CameraInfo codecs (ros2_opentrack.io.encodings)."""

import struct

import cv2
import numpy as np
import pytest

from ros2_opentrack.errors import InputError
from ros2_opentrack.io import encodings as enc
from ros2_opentrack.types import Mask2D

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


# -- raw images ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("pad", [0, 5])
def test_colour_round_trip_with_row_padding(encoding, pad):
    channels = 4 if "a" in encoding[3:] else 3
    step = 7 * channels + pad
    h, w, s, data = enc.numpy_to_image(RGB, encoding, step=step)
    assert (h, w, s, len(data)) == (5, 7, step, 5 * step)
    out = enc.image_to_numpy(encoding, h, w, s, data)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, RGB)


def test_bgr8_bytes_are_in_bgr_order():
    _, _, _, data = enc.numpy_to_image(np.array([[[10, 20, 30]]], np.uint8), "bgr8")
    assert data == bytes([30, 20, 10])
    _, _, _, data = enc.numpy_to_image(np.array([[[10, 20, 30]]], np.uint8), "bgra8")
    assert data == bytes([30, 20, 10, 255])
    out = enc.image_to_numpy("bgra8", 1, 1, 4, bytes([30, 20, 10, 7]))
    np.testing.assert_array_equal(out, [[[10, 20, 30]]])


def test_mono8_gives_grey_rgb_and_accepts_hw():
    grey = RNG.integers(0, 256, (4, 6), dtype=np.uint8)
    h, w, s, data = enc.numpy_to_image(grey, "mono8", step=8)
    out = enc.image_to_numpy("mono8", h, w, s, data)
    assert out.shape == (4, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)
    # RGB in -> BT.601 grey: (0.299*100 + 0.587*50 + 0.114*200) = 82.05 -> 82
    _, _, _, data = enc.numpy_to_image(np.array([[[100, 50, 200]]], np.uint8), "mono8")
    assert data == bytes([82])


@pytest.mark.parametrize(
    "encoding,dtype",
    [("16UC1", np.uint16), ("mono16", np.uint16), ("32FC1", np.float32), ("32SC1", np.int32), ("8UC1", np.uint8)],
)
@pytest.mark.parametrize("pad", [0, 8])
def test_single_channel_round_trip(encoding, dtype, pad):
    if dtype == np.float32:
        arr = RNG.random((4, 5)).astype(np.float32) * 5
    else:
        info = np.iinfo(dtype)
        arr = RNG.integers(max(info.min, -100000), min(info.max, 100000), (4, 5)).astype(dtype)
    itemsize = np.dtype(dtype).itemsize
    h, w, s, data = enc.numpy_to_image(arr, encoding, step=5 * itemsize + pad)
    out = enc.image_to_numpy(encoding, h, w, s, data)
    assert out.dtype == dtype and out.shape == (4, 5)
    np.testing.assert_array_equal(out, arr)


def test_big_endian_16uc1_and_32fc1():
    mm = np.array([[1, 256, 1000], [65535, 0, 4660]], np.uint16)
    raw = mm.astype(">u2").tobytes()
    assert raw[:2] == b"\x00\x01"  # really big-endian bytes
    np.testing.assert_array_equal(enc.image_to_numpy("16UC1", 2, 3, 6, raw, is_bigendian=1), mm)
    # the same bytes read as little-endian are byte-swapped values: 0x0100 = 256
    assert enc.image_to_numpy("16UC1", 2, 3, 6, raw, is_bigendian=0)[0, 0] == 256
    metres = np.array([[1.5, -2.25]], np.float32)
    padded = metres.astype(">f4").tobytes() + b"\0\0\0\0"  # step 12 > 8
    np.testing.assert_array_equal(enc.image_to_numpy("32FC1", 1, 2, 12, padded, is_bigendian=1), metres)


def test_encoding_names_are_case_insensitive_and_data_may_be_an_array():
    arr = np.array([[1, 2]], np.uint16)
    _, _, _, data = enc.numpy_to_image(arr, "16UC1")
    out = enc.image_to_numpy("16uc1", 1, 2, 4, np.frombuffer(data, np.uint8))
    np.testing.assert_array_equal(out, arr)


def test_decoded_image_owns_its_memory():
    data = bytearray(enc.numpy_to_image(RGB, "rgb8")[3])
    out = enc.image_to_numpy("rgb8", 5, 7, 21, data)
    data[0] ^= 0xFF
    assert out[0, 0, 0] == RGB[0, 0, 0]


@pytest.mark.parametrize(
    "args,needle",
    [
        (("yuv422", 2, 2, 4, b"\0" * 8), "yuv422"),
        (("rgb8", 2, 3, 8, b"\0" * 16), "step >= 9"),
        (("16UC1", 2, 3, 6, b"\0" * 11), "expected height*step = 2*6 = 12"),
        (("32FC1", 2, 2, 8, b"\0" * 20), "20 bytes"),
        (("mono8", 0, 3, 3, b""), "empty size"),
    ],
)
def test_bad_raw_images_raise_input_error_naming_the_problem(args, needle):
    with pytest.raises(InputError, match=needle.replace("*", r"\*")) as info:
        enc.image_to_numpy(*args)
    assert args[0] in str(info.value)  # names the encoding


def test_unknown_encoding_lists_the_supported_ones():
    with pytest.raises(InputError, match="expected one of rgb8, bgr8"):
        enc.image_to_numpy("bayer_rggb8", 1, 1, 1, b"\0")


@pytest.mark.parametrize(
    "array,encoding,needle",
    [
        (np.zeros((2, 2), np.uint8), "rgb8", "HxWx3"),
        (np.zeros((2, 2, 3), np.float32), "rgb8", "uint8"),
        (np.zeros((2, 2, 3), np.uint16), "16UC1", "HxW"),
        (np.full((2, 2), -1, np.int32), "16UC1", "outside the uint16 range"),
        (np.zeros((2, 2), np.float32), "16UC1", "must be uint16"),
    ],
)
def test_bad_arrays_to_encode_raise(array, encoding, needle):
    with pytest.raises(InputError, match=needle):
        enc.numpy_to_image(array, encoding)


def test_step_too_small_when_encoding():
    with pytest.raises(InputError, match="step >= 21"):
        enc.numpy_to_image(RGB, "rgb8", step=20)


# -- depth -------------------------------------------------------------------------------------------------


def test_depth_to_metres():
    mm = np.array([[0, 1000, 1234]], np.uint16)
    np.testing.assert_allclose(enc.depth_to_metres(mm, "16UC1"), [[0.0, 1.0, 1.234]], rtol=1e-6)
    np.testing.assert_allclose(enc.depth_to_metres(mm), [[0.0, 1.0, 1.234]], rtol=1e-6)  # dtype decides
    m = np.array([[np.nan, 2.5, 0.0, -1.0, np.inf]], np.float32)
    out = enc.depth_to_metres(m, "32FC1")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.0, 2.5, 0.0, 0.0, 0.0]])
    assert np.isnan(m[0, 0])  # input untouched
    with pytest.raises(InputError, match="depth encoding 'rgb8'"):
        enc.depth_to_metres(np.zeros((2, 2)), "rgb8")
    with pytest.raises(InputError, match="integer millimetres"):
        enc.depth_to_metres(np.zeros((2, 2), np.float32), "16UC1")


def test_depth_to_millimetres_rounds_to_nearest_and_zeroes_invalid():
    metres = np.array([[0.0015, 0.0025, 1.2344, 1.2346], [np.nan, np.inf, -np.inf, -0.5], [70.0, 65.535, 0, 1]])
    mm = enc.depth_to_millimetres(metres.astype(np.float32))
    assert mm.dtype == np.uint16
    np.testing.assert_array_equal(mm, [[2, 2, 1234, 1235], [0, 0, 0, 0], [65535, 65535, 0, 1000]])
    rng = np.random.default_rng(1)
    whole_mm = rng.integers(0, 65536, (4, 5)).astype(np.uint16)
    np.testing.assert_array_equal(enc.depth_to_millimetres(enc.depth_to_metres(whole_mm)), whole_mm)


# -- label images ------------------------------------------------------------------------------------------


def test_label_image_to_masks_one_mask_per_positive_id():
    labels = np.array([[0, 7, 7, 3], [2, 0, 7, -1]], np.int32)
    for dtype in (np.int32, np.uint16, np.uint8):
        arr = np.where(labels < 0, 0, labels).astype(dtype) if dtype != np.int32 else labels
        decoded = enc.label_image_to_masks(arr, names={7: "chair"})
        assert [m.source_id for m in decoded.masks] == [2, 3, 7]
        assert [m.label for m in decoded.masks] == [None, None, "chair"]
        np.testing.assert_array_equal(decoded.masks[2].mask, labels == 7)
        assert all(m.mask.dtype == bool and m.mask.shape == labels.shape for m in decoded.masks)
        assert (decoded.too_small, decoded.over_cap) == (0, 0)
    mono = np.repeat(labels.clip(0).astype(np.uint8)[..., None], 3, axis=2)  # mono8 decodes to equal channels
    assert [m.source_id for m in enc.label_image_to_masks(mono).masks] == [2, 3, 7]


def test_label_image_to_masks_drops_small_ids_then_keeps_the_largest():
    labels = np.zeros((10, 10), np.uint16)
    labels[0, :6] = 5  # 6 px
    labels[1, :4] = 9  # 4 px
    labels[2, :3] = 2  # 3 px
    labels[3, :1] = 4  # 1 px
    decoded = enc.label_image_to_masks(labels, min_pixels=3, max_ids=2)
    assert [m.source_id for m in decoded.masks] == [5, 9]
    assert (decoded.too_small, decoded.over_cap) == (1, 1)
    assert enc.label_image_to_masks(labels, max_ids=None).masks[0].source_id == 2


def test_hostile_label_image_of_random_ids_decodes_to_a_bounded_result():
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 50_000, (480, 640)).astype(np.uint16)  # ~50,000 distinct ids, a few pixels each
    n_ids = len(np.unique(labels))
    decoded = enc.label_image_to_masks(labels, max_ids=256)
    assert len(decoded.masks) == 256 and decoded.too_small == 0 and decoded.over_cap == n_ids - 256
    counts = np.bincount(labels.ravel())
    kept = [m.source_id for m in decoded.masks]
    assert counts[kept].min() >= np.sort(counts)[-256]  # the largest ids were kept
    np.testing.assert_array_equal(decoded.masks[0].mask, labels == kept[0])
    small = enc.label_image_to_masks(labels.astype(np.int32), min_pixels=12)
    assert small.too_small + small.over_cap + len(small.masks) == n_ids and len(small.masks) <= 256


def test_bad_label_images_raise():
    with pytest.raises(InputError, match="label image must be HxW integer ids"):
        enc.label_image_to_masks(np.zeros((2, 2), np.float32))
    with pytest.raises(InputError, match="label image must be HxW integer ids"):
        enc.label_image_to_masks(np.zeros(4, np.uint16))


def test_masks_to_label_image_ids_and_overlaps():
    a = np.zeros((3, 4), bool)
    a[0, :3] = True
    b = np.zeros((3, 4), bool)
    b[0, 2:] = True
    labels = enc.masks_to_label_image([Mask2D(mask=a, source_id=700), Mask2D(mask=b)], (3, 4))
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels[0], [700, 700, 2, 2])  # no source_id: position + 1; later wins
    decoded = enc.label_image_to_masks(labels)
    assert [m.source_id for m in decoded.masks] == [2, 700]


@pytest.mark.parametrize("ident,dtype", [(0, np.uint16), (-3, np.uint16), (65536, np.uint16), (256, np.uint8)])
def test_masks_to_label_image_rejects_ids_outside_the_dtype(ident, dtype):
    with pytest.raises(InputError, match="does not fit"):
        enc.masks_to_label_image([Mask2D(mask=np.ones((2, 2), bool), source_id=ident)], (2, 2), dtype)
    enc.masks_to_label_image([Mask2D(mask=np.ones((2, 2), bool), source_id=np.iinfo(dtype).max)], (2, 2), dtype)


# -- jpeg --------------------------------------------------------------------------------------------------


def test_jpeg_round_trip_is_close():
    x, y = np.meshgrid(np.arange(32) * 8, np.arange(24) * 10)
    smooth = np.dstack([x, y, np.full_like(x, 128)]).astype(np.uint8)
    data = enc.encode_jpeg(smooth, quality=95)
    assert data[:2] == b"\xff\xd8"
    back = enc.decode_jpeg(data)
    assert back.shape == smooth.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - smooth).mean() < 3
    with pytest.raises(InputError):
        enc.encode_jpeg(np.zeros((4, 4), np.uint8))


# -- compressed --------------------------------------------------------------------------------------------


def test_decode_png_and_jpeg():
    ok, png = cv2.imencode(".png", RGB[..., ::-1].copy())
    out = enc.decode_compressed("rgb8; png compressed bgr8", png.tobytes())
    np.testing.assert_array_equal(out, RGB)
    flat = np.full((16, 16, 3), (200, 40, 90), np.uint8)
    ok, jpg = cv2.imencode(".jpg", flat[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 100])
    out = enc.decode_compressed("jpeg", jpg.tobytes())
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - flat).max() <= 3  # lossy, but channel order must be RGB
    mm = np.array([[0, 500], [1000, 65535]], np.uint16)
    ok, png16 = cv2.imencode(".png", mm)
    np.testing.assert_array_equal(enc.decode_compressed("16UC1; png compressed", png16.tobytes()), mm)


def test_decode_compressed_depth_16uc1_and_32fc1():
    mm = np.array([[0, 500], [1000, 4000]], np.uint16)
    ok, png = cv2.imencode(".png", mm)
    data = struct.pack("<iff", 0, 0.0, 0.0) + png.tobytes()
    np.testing.assert_array_equal(enc.decode_compressed("16UC1; compressedDepth png", data), mm)
    # 32FC1: inverse depth quantised, d = A / (v - B); v = 0 invalid. A = 100, B = 0: v = 50 -> 2 m, v = 200 -> 0.5 m
    inv = np.array([[0, 50], [200, 100]], np.uint16)
    ok, png = cv2.imencode(".png", inv)
    data = struct.pack("<iff", 0, 100.0, 0.0) + png.tobytes()
    out = enc.decode_compressed("32FC1; compressedDepth", data)
    np.testing.assert_allclose(out, [[0.0, 2.0], [0.5, 1.0]])


@pytest.mark.parametrize(
    "fmt,data,needle",
    [
        ("jpeg", b"not an image at all", "could not be decoded"),
        ("tiff", b"II*\0", "format 'tiff' is not supported"),
        ("16UC1; compressedDepth rvl", struct.pack("<iff", 1, 0, 0) + b"\0" * 8, "RVL"),
        ("16UC1; compressedDepth", struct.pack("<iff", 1, 0, 0) + b"\0" * 8, "RVL"),
        ("16UC1; compressedDepth", b"\0\0", "12-byte header"),
        ("png", b"", "no data"),
    ],
)
def test_bad_compressed_raise(fmt, data, needle):
    with pytest.raises(InputError, match=needle):
        enc.decode_compressed(fmt, data)


# -- camera_info -------------------------------------------------------------------------------------------


def test_intrinsics_from_k():
    K = enc.intrinsics_from_k([500, 0, 320, 0, 510, 240, 0, 0, 1], hw=(480, 640))
    np.testing.assert_array_equal(K, [[500, 0, 320], [0, 510, 240], [0, 0, 1]])
    with pytest.raises(InputError, match="all zeros"):
        enc.intrinsics_from_k(np.zeros(9))
    with pytest.raises(InputError, match="9 values"):
        enc.intrinsics_from_k([1, 2, 3])
    with pytest.raises(InputError, match="non-finite"):
        enc.intrinsics_from_k([np.nan] * 9)
    with pytest.raises(InputError, match="outside"):
        enc.intrinsics_from_k([500, 0, 900, 0, 500, 240, 0, 0, 1], hw=(480, 640))
    fields = enc.camera_info_fields(K, 480, 640)
    assert fields["distortion_model"] == "plumb_bob" and not fields["d"].any()
    np.testing.assert_array_equal(fields["p"].reshape(3, 4)[:, :3], K)
