"""The validator's challenge path, rebuilt here as an independent reference, and the project's checked against it.

The reference is written in this file from the facts in `reference/natix-facts.md` (the subnet's
natix/utils/image_transforms.py, natix/protocol.py and natix/validator/forward.py at commit 28a1755),
with torchvision's own classes and draws: `RandomRotation.get_params` and
`RandomResizedCrop.get_params` under `torch.manual_seed`, `random.randint` for the severities,
`CenterCrop`, `Resize`, `ToTensor`, `ToPILImage`, and `F.rotate` called without an interpolation
argument. The project's `augment` is given the parameters the reference drew and must produce the
same pixels (and, through the JPEG, the same bytes); only the Gaussian noise is drawn differently,
so GNC is compared by its statistics, or given the reference's own normal draws.
One test per way the project used to differ: flips, rotation interpolation, GNC strength and
clipping, truncation, the point of interest, the distortions, and the bytes at the end."""
import base64, io, math, random

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image

from stage1_cascade.data import (DISTORT_FNS, augment, augment_params, challenge, challenge_jpeg,
                                 color_gaussian_noise, shift_to_point)
from stage1_cascade.scenes import make_scene

SIZE = 224
ROTATION = T.RandomRotation(20)  # the validator's RandomRotationWithParams(20, ...): degrees [-20, 20]
RRC = T.RandomResizedCrop(SIZE, scale=(0.2, 1.0), ratio=(1.0, 1.0))  # bilinear, antialias
PARAM = {"CS": [0.4, 0.3, 0.2, 0.1, 0.0], "CC": [0.85, 0.725, 0.6, 0.475, 0.35], "JPEG": [2, 3, 4, 5, 6],
         "GNC": [0.001, 0.002, 0.005, 0.01, 0.05], "GB": [7, 9, 13, 17, 21]}
LEVEL_OPS = {1: (), 2: (("CS", 1), ("CC", 1), ("JPEG", 1)),
             3: (("CS", 2), ("CC", 2), ("JPEG", 2), ("GNC", 2), ("GB", 2))}  # (name, max severity) in order


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    "Small tensors: one torch thread is faster, and the machine is shared."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _seed(s):
    random.seed(s); np.random.seed(s); torch.manual_seed(s)


# ---- the reference: the validator's YCbCr and distortions on BGR uint8 ----

def _ycc(bgr):
    f = bgr.astype(np.float32)
    ycrcb = cv2.cvtColor(f, cv2.COLOR_BGR2YCR_CB)  # float input: chroma offset 0.5
    out = ycrcb[:, :, (0, 2, 1)].astype(np.float32)
    out[:, :, 0] = (out[:, :, 0] * (235 - 16) + 16) / 255.0
    out[:, :, 1:] = (out[:, :, 1:] * (240 - 16) + 16) / 255.0
    return out


def _ycc_inv(ycc):
    v = ycc.astype(np.float32)
    v[:, :, 0] = (v[:, :, 0] * 255.0 - 16) / (235 - 16)
    v[:, :, 1:] = (v[:, :, 1:] * 255.0 - 16) / (240 - 16)
    return cv2.cvtColor(v[:, :, (0, 2, 1)].astype(np.float32), cv2.COLOR_YCR_CB2BGR)


def ref_cs(bgr, f):
    v = _ycc(bgr)
    for c in (1, 2): v[:, :, c] = 0.5 + (v[:, :, c] - 0.5) * f
    return _ycc_inv(v).astype(np.uint8)


def ref_cc(bgr, f): return (bgr.astype(np.float32) * f).astype(np.uint8)


def ref_jpeg_op(bgr, f):
    h, w, _ = bgr.shape
    return cv2.resize(cv2.resize(bgr, (w // f, h // f)), (w, h))


def ref_gnc(bgr, var, normal=None):
    v = _ycc(bgr) / 255
    n = np.random.randn(*v.shape) if normal is None else normal(v.shape)
    return np.clip(_ycc_inv((v + math.sqrt(var) * n) * 255), 0, 255).astype(np.uint8)


def ref_gb(bgr, k): return cv2.GaussianBlur(bgr, (k, k), k * 1.0 / 6)


REF_OPS = {"CS": ref_cs, "CC": ref_cc, "JPEG": ref_jpeg_op, "GNC": ref_gnc, "GB": ref_gb}


def ref_distort(t, name, severity):
    "One distortion step as the validator's wrapper runs it: RGB float tensor in, RGB float tensor out."
    if severity == 0: return t
    bgr = (t[[2, 1, 0]].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    out = REF_OPS[name](bgr, PARAM[name][severity - 1])
    return torch.from_numpy(out.astype(np.float32) / 255.0).permute(2, 0, 1)[[2, 1, 0]]


# ---- the reference: draws and geometry ----

def ref_shift(box, point, t):
    "The validator's adjustment towards `mask_center`, as its code reads (width, height) from the tensor."
    i, j, h, w = box; x, y = point
    width, height = t.shape[1:]
    if x < j: j = max(0, x - 10)
    elif x > j + w: j = min(width - w, x - w + 10)
    if y < i: i = max(0, y - 10)
    elif y > i + h: i = min(height - h, y - h + 10)
    return i, j, h, w


def ref_level0(img):
    return T.Compose([T.CenterCrop(min(img.size)), T.Resize(SIZE), T.ToTensor()])(img.convert("RGB"))


def ref_draw(img, level, point=None):
    "The validator's draws for `level` (global RNGs, in its order), in the project's parameter format."
    t = F.rotate(T.ToTensor()(img.convert("RGB")), angle := ROTATION.get_params(ROTATION.degrees))
    drawn = RRC.get_params(t, RRC.scale, RRC.ratio)
    box = drawn if point is None else ref_shift(drawn, point, t)
    sev = {name: random.randint(0, top) for name, top in LEVEL_OPS[level]}
    return dict(level=level, angle=angle, box=box, drawn=drawn, severity=sev)


def ref_apply(img, p, rotation=T.InterpolationMode.NEAREST):
    "The validator's transform for drawn parameters `p` (levels 1-3); the flip wrappers never flip, so no flip."
    t = F.rotate(T.ToTensor()(img.convert("RGB")), p["angle"], interpolation=rotation)
    t = F.resized_crop(t, *p["box"], RRC.size, RRC.interpolation, antialias=True)
    for name, _ in LEVEL_OPS[p["level"]]: t = ref_distort(t, name, p["severity"][name])
    return t


def ref_bytes(t):
    "What `prepare_synapse` sends: ToPILImage (truncating), Pillow's JPEG at its defaults."
    b = io.BytesIO(); T.ToPILImage()(t).save(b, format="JPEG"); return b.getvalue()


def px(t): return np.asarray(T.ToPILImage()(t))


SCENE = make_scene(11, roadwork=True).image  # 448x336
PORTRAIT = make_scene(12, roadwork=True, size=320).image.transpose(Image.Transpose.ROTATE_90)  # 240x320
ODD = make_scene(13, roadwork=False, size=451).image.crop((0, 0, 451, 337))  # odd margins: CenterCrop's rounding


# ---- one test per difference ----

def test_no_flips():
    "The project's own draws, replayed by the reference (which never flips), give the same pixels."
    for s in range(12):
        p = augment_params(SCENE.size, 1, s)
        assert not any("flip" in k for k in p)
        ours, ref = np.asarray(augment(SCENE, params=p)), px(ref_apply(SCENE, p))
        np.testing.assert_array_equal(ours, ref)
        assert (ours != ours[:, ::-1]).mean() > 0.3 and (ours != ours[::-1]).mean() > 0.3  # a flip would show


def test_rotation_is_nearest():
    "For the validator's own draws, pixel-identical; the bilinear rotation the wrapper was built with differs."
    _seed(1)
    for img in (SCENE, PORTRAIT):
        for _ in range(5):
            p = ref_draw(img, 1)
            ours = np.asarray(augment(img, params=p))
            np.testing.assert_array_equal(ours, px(ref_apply(img, p)))
            if abs(p["angle"]) > 1:
                assert (ours != px(ref_apply(img, p, T.InterpolationMode.BILINEAR))).mean() > 0.05


def test_gnc_strength_matches_validator():
    "Noise std on mid-grey, per RGB channel, within 3 % of the reference's, at severities 1 and 2."
    grey = np.full((SIZE, SIZE, 3), 128, np.uint8)
    for sev, facts in ((1, (15.9, 11.9, 18.7)), (2, (22.5, 16.9, 26.4))):
        np.random.seed(sev)
        ref = ref_gnc(grey, PARAM["GNC"][sev - 1])[..., ::-1].reshape(-1, 3).std(0)
        ours = color_gaussian_noise(grey, sev, np.random.default_rng(sev))[..., ::-1].reshape(-1, 3).std(0)
        np.testing.assert_allclose(ours, ref, rtol=0.03)
        np.testing.assert_allclose(ours, facts, rtol=0.03)  # the figures measured on the validator's code


class _Normals:
    "Hands the reference's own normal draws to the project's GNC (its only source of randomness)."
    def __init__(self, seed): self.rs = np.random.RandomState(seed)
    def standard_normal(self, shape): return self.rs.randn(*shape)


def test_gnc_clips_in_rgb():
    "Given the same normal draws, the project's GNC is the reference's pixel for pixel, dark and bright pixels included."
    img = np.asarray(SCENE.resize((SIZE, SIZE)))[..., ::-1].copy()
    img[:40] = 2; img[40:80] = 253  # where clipping decides
    for sev in (1, 2, 5):
        ref = ref_gnc(img, PARAM["GNC"][sev - 1], _Normals(sev).standard_normal)
        np.testing.assert_array_equal(color_gaussian_noise(img, sev, _Normals(sev)), ref)
    dark = np.full((SIZE, SIZE, 3), 2, np.uint8)  # and with independent draws: the clipped mean matches
    np.random.seed(0)
    ref = ref_gnc(dark, PARAM["GNC"][1]).reshape(-1, 3).mean(0)
    ours = color_gaussian_noise(dark, 2, np.random.default_rng(0)).reshape(-1, 3).mean(0)
    np.testing.assert_allclose(ours, ref, atol=0.3)
    assert (ours > 5).all()  # clipping at 0 in BGR lifts the mean well above 2


def test_truncation_not_rounding():
    "Float to uint8 truncates: after the resize (level 1) and after CC (level 2)."
    a = np.zeros((240, 320, 3), np.uint8); a[:, ::2] = 101; a[:, 1::2] = 102
    stripes = Image.fromarray(a)
    p = dict(level=1, angle=0.0, box=(0, 0, 240, 240), severity={})
    t = ref_apply(stripes, p)
    ours = np.asarray(augment(stripes, params=p))
    np.testing.assert_array_equal(ours, px(t))
    assert (ours == 101).all() and (np.rint(t.permute(1, 2, 0).numpy() * 255) == 102).mean() > 0.3
    flat = Image.new("RGB", (320, 240), (101, 101, 101))
    p = dict(level=2, angle=0.0, box=(10, 20, 200, 200), severity={"CS": 0, "CC": 1, "JPEG": 0})
    ours = np.asarray(augment(flat, params=p))
    np.testing.assert_array_equal(ours, px(ref_apply(flat, p)))
    assert (ours == 85).all()  # 101 * 0.85 = 85.85


def test_point_of_interest_same_box():
    "The shift lands on the reference's (i, j) for many torch draws, landscape and portrait, edges included."
    _seed(2)
    for img in (SCENE, PORTRAIT):
        t = T.ToTensor()(img)
        W, H = img.size
        for _ in range(300):
            drawn = RRC.get_params(t, RRC.scale, RRC.ratio)
            pt = (random.randrange(W), random.randrange(H))
            assert shift_to_point(drawn, pt, img.size) == ref_shift(drawn, pt, t), (drawn, pt)
    for s in range(4):  # whole pipeline, with crops pushed past the bottom edge (zero padding)
        p = ref_draw(SCENE, 1, point=(30 + 100 * s, 330))
        np.testing.assert_array_equal(np.asarray(augment(SCENE, params=p)), px(ref_apply(SCENE, p)))
    ours = augment_params(SCENE.size, 1, 5, point=(400, 300))
    assert ours["box"] == shift_to_point(ours["drawn"], (400, 300), SCENE.size)


def _kept(box, pt):
    i, j, h, w = box
    return j <= pt[0] < j + w and i <= pt[1] < i + h


def test_point_keep_rate_matches_validator():
    "On landscape frames the share of crops keeping the point is the reference's, and well below the old 1.00."
    for W, H in ((448, 336), (1920, 1080)):
        rng = np.random.default_rng(W); n = 1500
        pts = list(zip(rng.integers(0, W, n).tolist(), rng.integers(0, H, n).tolist()))
        ours = np.mean([_kept(augment_params((W, H), 1, s, pt)["box"], pt) for s, pt in enumerate(pts)])
        _seed(W); t = torch.zeros(3, H, W)
        ref = np.mean([_kept(ref_shift(RRC.get_params(t, RRC.scale, RRC.ratio), pt, t), pt) for pt in pts])
        assert abs(ours - ref) < 0.05, (W, H, ours, ref)
        assert ours < 0.9, (W, H, ours)


def test_float_point_is_floored():
    "The validator slices with the shifted coordinates, so a float point fails there; we floor it to its pixel."
    t = T.ToTensor()(SCENE)
    i, j, h, w = ref_shift((0, 0, 100, 100), (50.5, 300.5), t)  # y below the crop: shifted to a float row
    with pytest.raises(TypeError):
        F.resized_crop(t, i, j, h, w, RRC.size, RRC.interpolation, antialias=True)
    for s in range(20):
        assert augment_params(SCENE.size, 2, s, (50.5, 300.7))["box"] == augment_params(SCENE.size, 2, s, (50, 300))["box"]


def test_distortions_pixel_identical():
    "CS, CC, JPEG and GB at every severity, and levels 2 and 3 end to end for the validator's draws (no GNC)."
    bgr = np.asarray(SCENE.resize((SIZE, SIZE)))[..., ::-1].copy(); bgr[:8] = 255; bgr[8:16] = 0
    for name in ("CS", "CC", "JPEG", "GB"):
        for sev in range(1, 6):
            np.testing.assert_array_equal(DISTORT_FNS[name](bgr, sev), REF_OPS[name](bgr, PARAM[name][sev - 1]), err_msg=f"{name} {sev}")
    _seed(3); checked = 0
    for _ in range(40):
        p = ref_draw(SCENE, 2 if checked % 2 == 0 else 3)
        if p["severity"].get("GNC", 0): continue
        np.testing.assert_array_equal(np.asarray(augment(SCENE, params=p)), px(ref_apply(SCENE, p)))
        checked += 1
        if checked == 8: break
    assert checked == 8


def test_levels_0_and_1_same_jpeg_bytes():
    "What a miner receives: the same JPEG bytes (and base64) at level 0, and at level 1 for the same draws."
    for img in (SCENE, PORTRAIT, ODD):
        ref = ref_bytes(ref_level0(img))
        assert challenge_jpeg(img, 0) == ref
        assert challenge(img, 0) == base64.b64encode(ref).decode()
    _seed(4)
    for img in (SCENE, PORTRAIT, ODD):
        for _ in range(3):
            p = ref_draw(img, 1)
            assert challenge_jpeg(img, params=p) == ref_bytes(ref_apply(img, p))


def test_draws_follow_the_validator():
    "Our seeded draws have the validator's distributions: levels, angles, crop sizes and positions, severities."
    W, H = SCENE.size; n = 1500
    ours = [augment_params((W, H), 3, s) for s in range(n)]
    _seed(5); t = torch.zeros(3, H, W)
    ref = [RRC.get_params(t, RRC.scale, RRC.ratio) for _ in range(n)]
    q = [0.1, 0.5, 0.9]
    for k, scale in ((2, min(W, H)), (0, H), (1, W)):  # side, top, left
        np.testing.assert_allclose(np.quantile([p["box"][k] for p in ours], q), np.quantile([r[k] for r in ref], q), atol=0.05 * scale)
    angles = [p["angle"] for p in ours]
    assert -20 <= min(angles) < -19 and 19 < max(angles) <= 20 and abs(np.mean(angles)) < 1
    sev = np.array([[p["severity"][k] for k in ("CS", "CC", "JPEG", "GNC", "GB")] for p in ours])
    np.testing.assert_allclose([(sev == v).mean() for v in (0, 1, 2)], [1 / 3] * 3, atol=0.03)
    levels = [augment_params((W, H), None, s)["level"] for s in range(n)]
    np.testing.assert_allclose(np.bincount(levels, minlength=4) / n, [0.25] * 4, atol=0.04)


def test_alpha_dropped_and_exif_ignored_like_the_validator():
    "The validator's ConvertToRGB is PIL's convert('RGB') on the cached image: alpha dropped (not laid on white), EXIF orientation not applied."
    a = np.asarray(SCENE).copy()
    rgba = np.dstack([a, np.full(a.shape[:2], 255, np.uint8)]); rgba[:, : a.shape[1] // 2, 3] = 0  # left half transparent
    img = Image.fromarray(rgba, "RGBA")
    ref = ref_bytes(ref_level0(img))
    assert challenge_jpeg(img, 0) == ref
    b = io.BytesIO(); img.save(b, format="PNG")
    assert challenge_jpeg(b.getvalue(), 0) == ref  # the same from encoded bytes
    exif = Image.Exif(); exif[0x0112] = 6  # "rotate 90 on display": the validator does not
    j = io.BytesIO(); SCENE.save(j, format="JPEG", quality=95, exif=exif)
    cached = Image.open(io.BytesIO(j.getvalue()))
    assert challenge_jpeg(j.getvalue(), 0) == ref_bytes(ref_level0(cached))
    assert Image.open(io.BytesIO(challenge_jpeg(j.getvalue(), 0))).size == (SIZE, SIZE)
