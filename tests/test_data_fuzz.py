"Fuzz `load_image` with damaged files: every input must give an RGB image or an `InvalidImage` with a known reason."
import base64, io, random
import numpy as np
import pytest
from PIL import Image
from stage1_cascade.data import INVALID_REASONS, InvalidImage, load_image, augment, to_jpeg
from stage1_cascade.scenes import make_scene

def _encoded():
    img = make_scene(3, roadwork=True, size=160).image
    out = {}
    for fmt, kw in (("JPEG", {"quality": 80}), ("PNG", {}), ("WEBP", {"quality": 80}), ("BMP", {})):
        b = io.BytesIO(); img.save(b, fmt, **kw); out[fmt] = b.getvalue()
    b = io.BytesIO(); img.convert("P").save(b, "PNG"); out["PNG-P"] = b.getvalue()
    b = io.BytesIO(); img.convert("RGBA").save(b, "PNG"); out["PNG-RGBA"] = b.getvalue()
    return out

ENC = _encoded()

def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data); kind = rng.randrange(4)
    if kind == 0: return bytes(b[: rng.randrange(len(b))])  # truncate anywhere
    if kind == 1:  # flip random bytes
        for _ in range(rng.randint(1, 20)): b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if kind == 2:  # damage the header only
        for _ in range(rng.randint(1, 4)): b[rng.randrange(min(64, len(b)))] = rng.randrange(256)
        return bytes(b)
    i = rng.randrange(len(b)); j = min(len(b), i + rng.randint(1, 500))
    return bytes(b[:i] + b[j:])  # cut a chunk out of the middle

def _check(src):
    try: img = load_image(src)
    except InvalidImage as ex:
        assert ex.reason in INVALID_REASONS and ex.reason in str(ex)
        return ex.reason
    assert img.mode == "RGB" and min(img.size) >= 16
    return "ok"

@pytest.mark.parametrize("fmt", sorted(ENC))
def test_damaged_files_never_escape(fmt):
    rng = random.Random(fmt)
    seen = {_check(_mutate(ENC[fmt], rng)) for _ in range(150)}
    assert seen - {"ok"}, f"no damaged {fmt} file was refused: {seen}"

def test_damaged_base64_never_escapes():
    rng = random.Random(0); s = base64.b64encode(ENC["JPEG"]).decode()
    alphabet = "ABCxyz019+/=-_ .!@\n"
    for _ in range(200):
        t = list(s)
        for _ in range(rng.randint(1, 5)): t[rng.randrange(len(t))] = rng.choice(alphabet)
        _check("".join(t)); _check("data:image/jpeg;base64," + "".join(t))

def test_random_bytes_are_not_images():
    rng = np.random.default_rng(0)
    reasons = {_check(rng.integers(0, 256, int(n), dtype=np.uint8).tobytes()) for n in rng.integers(1, 4000, 100)}
    assert reasons <= {"not_an_image", "truncated", "corrupt", "unsupported_format"}, reasons

def test_augment_of_every_valid_format_is_224_jpeg():
    for fmt, data in ENC.items():
        for level in range(4):
            out = load_image(to_jpeg(augment(load_image(data), level, seed=level)))
            assert out.size == (224, 224), (fmt, level)
