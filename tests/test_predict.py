"""Image decoding, Fashion-MNIST-style preprocessing and the Predictor, on generated images."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from fmnist.errors import ImageError
from fmnist.evaluate import evaluate
from fmnist.images import MAX_PIXELS, open_image, preprocess
from fmnist.models import build_model
from fmnist.predict import Prediction, Predictor


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def shape_on(size, background, fill, box, mode="RGB", ellipse=True) -> Image.Image:
    img = Image.new(mode, size, background)
    draw = ImageDraw.Draw(img)
    (draw.ellipse if ellipse else draw.rectangle)(box, fill=fill)
    return img


def bbox(arr: np.ndarray, threshold: int = 30) -> tuple[int, int]:
    """(height, width) of the bright object."""
    rows = np.flatnonzero((arr > threshold).any(axis=1))
    cols = np.flatnonzero((arr > threshold).any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def corners(arr: np.ndarray) -> np.ndarray:
    """The four corner pixels: background for an ellipse, which otherwise fills the box (the
    object is cropped tight, so its extreme points touch the frame, as in Fashion-MNIST)."""
    return arr[[0, 0, -1, -1], [0, -1, 0, -1]]


# ---- preprocess ---------------------------------------------------------------------------------


def test_dark_on_light_is_inverted():
    out = preprocess(shape_on((200, 160), "white", "black", (40, 20, 160, 140)))
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    assert corners(out).max() == 0  # white background -> black
    assert out[14, 14] == 255  # black object -> white
    assert bbox(out) == (28, 28)  # the object fills the 28-pixel box


def test_light_on_dark_keeps_polarity_and_matches_its_negative():
    light = shape_on((200, 160), "black", "white", (40, 20, 160, 140))
    out = preprocess(light)
    assert corners(out).max() == 0 and out[14, 14] == 255
    assert np.abs(out.astype(int) - preprocess(ImageOps.invert(light))).max() <= 1


def test_off_white_background_becomes_black():
    out = preprocess(shape_on((120, 120), (225, 225, 225), (40, 40, 40), (20, 20, 100, 100)))
    assert corners(out).max() == 0
    # levels: the background level maps to 0 and full white stays full white, so the object
    # (215 after inversion, on a background of 30) lands at (215 - 30) * 255 / 225 = 210
    assert out[14, 14] == 210


def test_coloured_rgb():
    # a red item on a light-blue background (both coloured; luminance decides)
    out = preprocess(shape_on((150, 150), (173, 216, 230), (200, 30, 30), (30, 20, 120, 130)))
    assert corners(out).max() == 0
    assert out[14, 14] > 100


@pytest.mark.parametrize("fill", [(30, 30, 30, 255), (240, 240, 240, 255)])
def test_rgba_transparency_contrasting_background(fill):
    # dark or light cut-out on a fully transparent canvas: both must come out light on black
    img = shape_on((100, 100), (0, 0, 0, 0), fill, (20, 10, 80, 90), mode="RGBA")
    out = preprocess(img)
    assert corners(out).max() == 0
    assert out[14, 14] > 200


def test_non_square_keeps_aspect_ratio():
    img = shape_on((300, 60), "white", "black", (20, 10, 280, 50), ellipse=False)
    h, w = bbox(preprocess(img))
    assert w == 28 and h <= 6  # 261x41 -> 28x4: wider than tall, not stretched


def test_tall_object_is_centred():
    out = preprocess(shape_on((60, 300), "black", "white", (20, 20, 40, 280), ellipse=False))
    h, w = bbox(out)
    assert h == 28 and w <= 4
    cols = np.flatnonzero(out.max(axis=0) > 30)
    assert abs((cols[0] + cols[-1]) / 2 - 13.5) <= 1


def test_tiny_image_is_enlarged():
    arr = np.zeros((5, 5), np.uint8)
    arr[2, :] = arr[:, 2] = 255  # a plus sign
    out = preprocess(Image.fromarray(arr))
    # a 5-pixel plus enlarged 5.6x is blurry: corners stay dark, the centre full white
    assert bbox(out) == (28, 28) and corners(out).max() < 40 and out[14, 14] == 255


def test_huge_image():
    img = shape_on((4000, 3000), "white", "black", (1000, 500, 3000, 2500))
    assert img.width * img.height < MAX_PIXELS
    out = preprocess(img)
    assert bbox(out) == (28, 28) and corners(out).max() == 0


def test_blank_image_stays_blank():
    assert preprocess(Image.new("L", (50, 40), 255)).max() == 0


def test_fashion_mnist_like_array_round_trips_exactly():
    # an item as Fashion-MNIST stores it: light on black, touching top and bottom, centred
    rng = np.random.default_rng(0)
    arr = np.zeros((28, 28), np.uint8)
    arr[:, 4:25] = rng.integers(60, 256, size=(28, 21))
    assert np.array_equal(preprocess(Image.fromarray(arr)), arr)


@pytest.mark.realdata
def test_real_test_images_mostly_round_trip():
    from fmnist.datasets import load_arrays

    images, _ = load_arrays("fashion-mnist", "test")
    diffs = np.array([
        np.abs(preprocess(Image.fromarray(img)).astype(int) - img).mean() for img in images[:500]
    ])
    assert np.median(diffs) == 0 and (diffs == 0).mean() > 0.8


def test_box_size_for_mnist_style():
    out = preprocess(shape_on((100, 100), "white", "black", (10, 10, 90, 90)), box=20)
    assert bbox(out) == (20, 20) and out[:4].max() == 0


# ---- open_image ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_open_image_formats(fmt, tmp_path):
    img = shape_on((80, 60), "white", "black", (20, 10, 60, 50))
    data = encode(img, fmt)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    for source in (data, path, str(path)):
        opened = open_image(source)
        assert opened.size == (80, 60)
        out = preprocess(opened)
        assert corners(out).max() <= 10 and out[14, 14] > 200


def test_gif_first_frame():
    first = Image.new("L", (40, 40), 0)
    second = Image.new("L", (40, 40), 255)
    data = encode(first, "GIF", save_all=True, append_images=[second])
    assert np.asarray(open_image(data).convert("L")).max() == 0


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (100, 50), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    opened = open_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert opened.size == (50, 100)


def test_not_an_image():
    with pytest.raises(ImageError, match="upload is not an image"):
        open_image(b"this is plain text, not pixels")


def test_truncated_png():
    data = encode(Image.effect_noise((200, 200), 50), "PNG")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        open_image(data[: len(data) // 2])


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "half.jpg"
    data = encode(Image.effect_noise((200, 200), 50).convert("RGB"), "JPEG")
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="half.jpg"):
        open_image(path)


def test_too_many_pixels_checked_before_decoding():
    with pytest.raises(ImageError, match="more than the 1,000 accepted"):
        open_image(encode(Image.new("L", (100, 100)), "PNG"), max_pixels=1000)


def test_empty_missing_and_folder(tmp_path):
    with pytest.raises(ImageError, match="empty"):
        open_image(b"")
    with pytest.raises(ImageError, match="does not exist"):
        open_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        open_image(tmp_path)


# ---- Predictor ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["mlp", "cnn", "resnet"])
def test_predictor_on_checkpoints(make_checkpoint, model):
    predictor = Predictor.from_checkpoint(make_checkpoint(model, name=model))
    predictor.warmup()
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    probs = predictor.predict_arrays(arrays)
    assert probs.shape == (5, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # batching must not change the answer
    np.testing.assert_allclose(predictor.predict_arrays(arrays[2:3])[0], probs[2], atol=1e-5)


def test_predict_pil_equals_preprocessed_array(make_checkpoint):
    predictor = Predictor.from_checkpoint(make_checkpoint("cnn"))
    images = [
        shape_on((120, 90), "white", "black", (20, 10, 100, 80)),
        shape_on((50, 200), "black", (200, 150, 0), (5, 20, 45, 180)),
    ]
    from_pil = predictor.predict(images)
    from_arrays = predictor.predict([preprocess(img) for img in images])
    assert len(from_pil) == 2
    for a, b in zip(from_pil, from_arrays, strict=True):
        assert a.label == b.label and a.index == b.index
        assert a.probabilities == pytest.approx(b.probabilities)
        assert list(a.probabilities) == predictor.classes
        assert sum(a.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert predictor.predict([]) == []


def test_predictor_rejects_bad_arrays(make_checkpoint):
    predictor = Predictor.from_checkpoint(make_checkpoint("mlp"))
    with pytest.raises(ImageError):
        predictor.predict_arrays(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(ImageError):
        predictor.predict([np.zeros((28, 28), np.float32)])


def test_prediction_top():
    p = Prediction(index=1, label="b", probabilities={"a": 0.2, "b": 0.5, "c": 0.3})
    assert p.top(2) == [("b", 0.5), ("c", 0.3)]
    assert p.top(10) == [("b", 0.5), ("c", 0.3), ("a", 0.2)]
    assert p.to_dict(1)["top"] == [{"label": "b", "probability": 0.5}]
    assert p.to_dict() == {
        "label": "b", "index": 1, "probability": 0.5,
        "top": [{"label": "b", "probability": 0.5}, {"label": "c", "probability": 0.3},
                {"label": "a", "probability": 0.2}],
        "probabilities": {"a": 0.2, "b": 0.5, "c": 0.3},
        "set": None, "recognised": None, "ood_score": None,
    }


def test_only_the_promised_formats_are_decoded(tmp_path):
    # TIFF is a real image PIL could read, but not one we promise: other decoders are attack
    # surface (a fuzzed file once reached a DDS decoder's NotImplementedError).
    path = tmp_path / "photo.tiff"
    Image.new("L", (10, 10), 128).save(path)
    with pytest.raises(ImageError, match="not an image PIL can read"):
        open_image(path)


def test_devices_and_pipes_are_refused(tmp_path):
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        open_image(fifo)


def _cnn_with_tta() -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = build_model("cnn", {"widths": [8, 16, 16]})
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    head.weight.data *= 100  # confident logits, so flipping the input visibly changes them
    meta = {"classes": [f"c{i}" for i in range(10)], "normalize": {"mean": 0.3, "std": 0.4},
            "tta_flip": True}
    return model, meta


def test_predictor_leaves_the_callers_model_alone():
    """The benchmarks' plain-eager reference shares its model with a Predictor: converting it
    to channels_last (or to eval mode) would change what the reference measures."""
    model, meta = _cnn_with_tta()
    model.train()
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predictor = Predictor(model, meta)
    predictor.predict_arrays(np.zeros((2, 28, 28), np.uint8))
    evaluate(model, np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.int64), meta)
    assert conv.weight.is_contiguous()  # still NCHW
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm statistics untouched too
    # the predictor's own copy is the fast layout
    own = next(m for m in predictor.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert own.weight.is_contiguous(memory_format=torch.channels_last)


def test_the_inference_copy_is_on_the_device_asked_for():
    from fmnist.inference import prepare_for_inference

    model = build_model("cnn", {"widths": [4, 4, 8]})
    copy = prepare_for_inference(model, torch.device("meta"))  # "meta" stands in for a GPU
    assert {p.device.type for p in copy.parameters()} == {"meta"}
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_accuracy_shown_is_accuracy_served():
    """A run trained with flip TTA reports TTA accuracy; the predictor must serve the same
    logits (average of the image's and its mirror's), so every prediction agrees with evaluate."""
    model, meta = _cnn_with_tta()
    model.eval()
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    x = (torch.from_numpy(images).unsqueeze(1).float() / 255 - 0.3) / 0.4
    with torch.no_grad():
        tta = torch.softmax((model(x) + model(x.flip(-1))) / 2, dim=1).numpy()
        plain = torch.softmax(model(x), dim=1).numpy()
    assert (tta.argmax(1) != plain.argmax(1)).any()  # the test can tell the two apart
    np.testing.assert_allclose(Predictor(model, meta).predict_arrays(images), tta, atol=1e-5)
    np.testing.assert_allclose(Predictor(model, meta, tta=False).predict_arrays(images), plain,
                               atol=1e-5)
    labels = tta.argmax(1)
    report = evaluate(model, images, labels, meta)
    assert report.accuracy == 1.0  # evaluate scores exactly what the predictor answers
    no_tta = {**meta, "tta_flip": False}
    np.testing.assert_allclose(Predictor(model, no_tta).predict_arrays(images), plain, atol=1e-5)


def test_an_empty_batch_gives_an_empty_float32_answer():
    predictor = Predictor(*_cnn_with_tta())
    probs = predictor.predict_arrays(np.zeros((0, 28, 28), np.uint8))
    assert probs.shape == (0, 10) and probs.dtype == np.float32


def test_float_images_are_refused_saying_what_is_expected():
    predictor = Predictor(*_cnn_with_tta())
    with pytest.raises(ImageError, match=r"Expected uint8 images of shape \(N, 28, 28\), got torch.float32"):
        predictor.predict_arrays(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(ImageError, match="Expected a PIL image or a uint8 28x28 array"):
        predictor.predict([np.zeros((28, 28), np.float32)])


def test_a_prediction_lists_three_classes_unless_asked_otherwise():
    p = Predictor(*_cnn_with_tta()).predict([np.zeros((28, 28), np.uint8)])[0]
    assert len(p.to_dict()["top"]) == 3 and len(p.top()) == 3 and p.top(0) == []


def test_an_mnist_checkpoint_fits_photos_in_a_20_pixel_box():
    # MNIST digits sit in a 20x20 box, Fashion-MNIST items fill the frame
    model, meta = _cnn_with_tta()
    square = Image.new("L", (100, 100), 0)
    square.paste(255, (10, 10, 90, 90))
    assert bbox(Predictor(model, {**meta, "dataset": "mnist"}).preprocess(square)) == (20, 20)
    assert bbox(Predictor(model, meta).preprocess(square)) == (28, 28)


def test_from_checkpoint_takes_tta_from_the_run_unless_told(make_checkpoint):
    import json

    folder = make_checkpoint("cnn", {"widths": [4, 4, 8]})
    meta_path = folder / "model.json"
    assert not Predictor.from_checkpoint(folder).tta
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "tta_flip": True}))
    assert Predictor.from_checkpoint(folder).tta and not Predictor.from_checkpoint(folder, tta=False).tta


def test_from_checkpoint_refuses_another_architecture(make_checkpoint):
    from fmnist.errors import CheckpointError

    with pytest.raises(CheckpointError, match="holds a 'cnn' model, not 'mlp'"):
        Predictor.from_checkpoint(make_checkpoint("cnn", {"widths": [4, 4, 8]}), model="mlp")


def test_inputs_are_standardised_as_the_checkpoint_says():
    from fmnist.inference import autocast_for, to_input

    x = torch.tensor([[[0, 51, 255]]], dtype=torch.uint8)
    for mean, std in ((0.0, 1.0), (0.5, 1.0), (0.0, 2.0), (1.0, 1.0), (0.3, 0.4)):
        want = (x.unsqueeze(1).float() / 255 - mean) / std
        torch.testing.assert_close(to_input(x, mean, std), want)
    linear = torch.nn.Linear(4, 2)
    with autocast_for(torch.device("cpu"), True):
        assert linear(torch.ones(1, 4)).dtype == torch.bfloat16
    with autocast_for(torch.device("cpu"), False):
        assert linear(torch.ones(1, 4)).dtype == torch.float32
