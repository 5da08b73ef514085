"""Training / evaluation pairs with exact or measured geometry.

Sources:
- posed RGB-D sequences (TUM layout): depth lifts source pixels to 3D; a point counts as visible
  in the target when it projects inside it in front of the camera and the target depth agrees
  (relative difference < ``depth_tol``): the occlusion test;
- COLMAP models (pycolmap): co-visible points are the 3D points whose tracks hold both images;
- synthetic textured planes: the source image is a fronto-parallel plane at depth 1 in the
  source camera, the target camera is a random rigid motion of it (in-plane rotation, tilt,
  scale through depth change), the target image is rendered by the exact plane homography and
  photometrically augmented.

Pair mining: co-visibility (fraction of a sparse source depth grid visible in the target) above a
threshold, viewpoint change = relative rotation angle; mined pairs are split evenly into
easy / medium / hard by that angle (terciles), as the paper splits by viewpoint change.

Frames: ``T_cam_world`` is world-to-camera (x_cam = R x_world + t), pixels in the OpenCV
convention (nre_ros.camera).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from nre_ros.camera import Camera
from nre_ros.datasets import TumSequence, load_rgb
from nre_ros.geometry import invert, rotation_angle_deg
from nre_ros.paths import shared_data_dir

DATA = shared_data_dir()
FR1 = DATA / 'tum_rgbd_fr1_rpy'
CABINET = DATA / 'tum_rgbd_fr3_cabinet_keyframes'
MEGADEPTH = DATA / 'nre_megadepth_pair'
SACRE_COEUR = DATA / 'sfm_sacre_coeur_hloc'
# Sacre-Coeur images other sessions may hold out as queries (its README): never trained on.
SACRE_COEUR_HELD_OUT = ('17295357_9106075285.jpg', '93341989_396310999.jpg',
                        '44120379_8371960244.jpg')


@dataclass
class View:
    """One posed image.

    Attributes:
        key: unique id, e.g. 'fr1:rgb/1305031229.528748.jpg'.
        image: (H, W, 3) uint8 RGB.
        camera: intrinsics of ``image`` (OpenCV convention, may have distortion).
        T_cam_world: (4, 4) float64 world-to-camera.
        depth: (H, W) float32 metres (0 = invalid) or None.
    """

    key: str
    image: np.ndarray
    camera: Camera
    T_cam_world: np.ndarray
    depth: np.ndarray | None = None


@dataclass
class Pair:
    """Source/target views and co-visible points.

    Attributes:
        src, tgt: keys of the two views.
        uv_src, uv_tgt: (N, 2) float64 pixels of the same N points (visible in both).
        angle_deg: relative rotation between the cameras.
        covis: co-visibility score used for mining.
        split: 'easy' | 'medium' | 'hard' | '' (not split).
    """

    src: str
    tgt: str
    uv_src: np.ndarray
    uv_tgt: np.ndarray
    angle_deg: float
    covis: float
    split: str = ''
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- RGB-D sequences
def tum_views(root: str | Path, names: list[str] | None = None, prefix: str = '') -> list[View]:
    """Views (with depth) of a TUM-layout sequence; ``names`` = rgb paths to keep (file order)."""
    seq = TumSequence(root)
    frames = seq.frames if names is None else [seq.frame(n) for n in names]
    prefix = prefix or Path(root).name
    return [View(f'{prefix}:{f.name}', seq.load_rgb(f), seq.camera, invert(f.T_world_cam),
                 seq.load_depth(f)) for f in frames]


def split_names(root: str | Path, split: str) -> list[str]:
    path = Path(root) / f'split_{split}.txt'
    return [ln.strip() for ln in path.read_text().splitlines()
            if ln.strip() and not ln.startswith('#')]


def fr1_training_names() -> list[str]:
    """fr1_rpy frames in no query split (hard_map minus query): never an evaluation query."""
    excluded = set(split_names(FR1, 'query')) | set(split_names(FR1, 'hard_query'))
    return [n for n in split_names(FR1, 'hard_map') if n not in excluded]


def lift_depth(view: View, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) integer-valued pixels -> (N, 3) world points and (N,) bool valid depth."""
    ui = np.clip(np.round(uv).astype(int), 0, [view.camera.width - 1, view.camera.height - 1])
    z = view.depth[ui[:, 1], ui[:, 0]].astype(np.float64)
    ok = z > 0
    pc = view.camera.unproject(uv, np.where(ok, z, 1.0))
    T = invert(view.T_cam_world)
    return pc @ T[:3, :3].T + T[:3, 3], ok


def visible_in(view: View, points_world: np.ndarray, depth_tol: float = 0.05,
               margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Project world points into ``view``: (N, 2) pixels and (N,) bool visible (in the image
    shrunk by ``margin``, in front, and, with depth, agreeing with the view's depth)."""
    pc = points_world @ view.T_cam_world[:3, :3].T + view.T_cam_world[:3, 3]
    uv, ok = view.camera.project(pc)
    uv = np.nan_to_num(uv, nan=-1e6, posinf=1e6, neginf=-1e6)
    ok &= view.camera.in_image(uv, margin)
    if view.depth is not None:
        ui = np.clip(np.round(uv).astype(int), 0, [view.camera.width - 1,
                                                    view.camera.height - 1])
        zt = view.depth[ui[:, 1], ui[:, 0]]
        ok &= (zt > 0) & (np.abs(pc[:, 2] - zt) < depth_tol * np.maximum(zt, 1e-6))
    return uv, ok


def grid_pixels(view: View, step: int, offset: float = 0.0) -> np.ndarray:
    ys, xs = np.mgrid[step // 2:view.camera.height:step, step // 2:view.camera.width:step]
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64) + offset


def assign_splits(pairs: list[Pair]) -> list[Pair]:
    """Split pairs evenly by viewpoint change (rotation angle terciles)."""
    if not pairs:
        return pairs
    order = np.argsort([p.angle_deg for p in pairs], kind='stable')
    names = np.array(['easy', 'medium', 'hard'])
    for rank, i in enumerate(order):
        pairs[i].split = str(names[min(2, 3 * rank // len(pairs))])
    return pairs


def mine_pairs(views: list[View], min_covis: float = 0.3, min_angle: float = 3.0,
               max_pairs: int | None = None, seed: int = 0, step: int = 16) -> list[Pair]:
    """All ordered pairs with co-visibility >= min_covis and rotation >= min_angle (degrees),
    optionally sub-sampled to ``max_pairs`` evenly over the splits. Points are left empty:
    fill them with ``sample_points``."""
    lifted = []
    for v in views:
        X, ok = lift_depth(v, grid_pixels(v, step))
        lifted.append(X[ok])
    out = []
    for i, a in enumerate(views):
        for j, b in enumerate(views):
            if i == j or not len(lifted[i]):
                continue
            ang = float(rotation_angle_deg(a.T_cam_world[:3, :3], b.T_cam_world[:3, :3]))
            if ang < min_angle:
                continue
            c = float(visible_in(b, lifted[i])[1].mean())
            if c >= min_covis:
                out.append(Pair(a.key, b.key, np.zeros((0, 2)), np.zeros((0, 2)), ang, c))
    out = assign_splits(out)
    if max_pairs is not None and len(out) > max_pairs:
        rng = np.random.default_rng(seed)
        keep = []
        for s in ('easy', 'medium', 'hard'):
            idx = [k for k, p in enumerate(out) if p.split == s]
            keep += sorted(rng.choice(idx, min(max_pairs // 3, len(idx)), replace=False).tolist())
        out = [out[k] for k in sorted(keep)]
    return out


def sample_points(pair: Pair, src: View, tgt: View, n: int, rng: np.random.Generator,
                  margin: float = 8.0, depth_tol: float = 0.05) -> Pair:
    """Fill ``pair`` with up to ``n`` random sub-pixel source points with depth that are
    visible (occlusion-checked) in the target at least ``margin`` px inside it."""
    H, W = src.depth.shape
    cand = rng.uniform([margin, margin], [W - 1 - margin, H - 1 - margin], (8 * n, 2))
    X, ok = lift_depth(src, cand)
    uv_t, vis = visible_in(tgt, X, depth_tol, margin)
    keep = np.nonzero(ok & vis)[0][:n]
    pair.uv_src, pair.uv_tgt = cand[keep], uv_t[keep]
    return pair


# ---------------------------------------------------------------------------- COLMAP models
def colmap_views_and_pairs(model_dir: str | Path, image_dir: str | Path, max_side: int = 640,
                           exclude: tuple[str, ...] = SACRE_COEUR_HELD_OUT,
                           min_common: int = 50, prefix: str = 'colmap'
                           ) -> tuple[list[View], list[Pair]]:
    """Views (resized to ``max_side``) and co-visible pairs of a COLMAP model (pycolmap)."""
    import pycolmap

    from nre_ros.maps.colmap import colmap_camera
    rec = pycolmap.Reconstruction(str(model_dir))
    ims = sorted((im for im in rec.images.values() if im.has_pose and im.name not in exclude),
                 key=lambda im: im.name)
    views, tracks = [], []
    for im in ims:
        cam = colmap_camera(rec.cameras[im.camera_id])
        image = load_rgb(Path(image_dir) / im.name)
        cam2 = cam.resized_max_side(max_side)
        image = cv2.resize(image, (cam2.width, cam2.height), interpolation=cv2.INTER_AREA)
        T = np.eye(4)
        T[:3] = np.asarray(im.cam_from_world().matrix())
        views.append(View(f'{prefix}:{im.name}', image, cam2, T))
        tracks.append({int(p.point3D_id) for p in im.points2D if p.has_point3D()})
    pts = {int(k): np.asarray(v.xyz) for k, v in rec.points3D.items()}
    pairs = []
    for i, a in enumerate(views):
        for j, b in enumerate(views):
            common = sorted(tracks[i] & tracks[j]) if i != j else []
            if len(common) < min_common:
                continue
            X = np.stack([pts[k] for k in common])
            uv_a, ok_a = visible_in(a, X, margin=8.0)
            uv_b, ok_b = visible_in(b, X, margin=8.0)
            ok = ok_a & ok_b
            angle = float(rotation_angle_deg(a.T_cam_world[:3, :3], b.T_cam_world[:3, :3]))
            pairs.append(Pair(a.key, b.key, uv_a[ok], uv_b[ok], angle,
                              len(common) / max(len(tracks[i]), 1)))
    return views, assign_splits(pairs)


# ---------------------------------------------------------------------------- synthetic planes
def random_plane_motion(rng: np.random.Generator, max_roll: float = 30.0, max_tilt: float = 25.0,
                        scale: tuple[float, float] = (0.75, 1.35)) -> np.ndarray:
    """(4, 4) T_tgt_src looking at the plane z = 1 of the source camera: in-plane rotation,
    tilt about an axis through the plane point on the optical axis, depth change = scale."""
    roll = np.radians(rng.uniform(-max_roll, max_roll))
    tilt = np.radians(rng.uniform(0, max_tilt))
    axis_dir = rng.uniform(0, 2 * np.pi)
    axis = np.array([np.cos(axis_dir), np.sin(axis_dir), 0.0])
    R_tilt = cv2.Rodrigues(axis * tilt)[0]
    R_roll = cv2.Rodrigues(np.array([0.0, 0.0, roll]))[0]
    R = R_roll @ R_tilt
    s = rng.uniform(*scale)                 # apparent scale: plane centre at depth 1/s
    centre = np.array([0.0, 0.0, 1.0])
    t = np.array([0.0, 0.0, 1.0 / s]) - R @ centre + rng.normal(0, 0.05, 3) * [1, 1, 0]
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def plane_homography(K_src: np.ndarray, K_tgt: np.ndarray, T_tgt_src: np.ndarray) -> np.ndarray:
    """Homography source pixel -> target pixel induced by the plane z = 1 (source frame)."""
    n = np.array([[0.0, 0.0, 1.0]])
    R, t = T_tgt_src[:3, :3], T_tgt_src[:3, 3:]
    return K_tgt @ (R + t @ n) @ np.linalg.inv(K_src)


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, gamma, blur and noise (uint8 in, uint8 out)."""
    x = image.astype(np.float32) / 255.0
    x = np.clip((x - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.15, 0.15), 0, 1)
    x = x ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.5))
    x = x + rng.normal(0, rng.uniform(0, 0.03), x.shape).astype(np.float32)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def synthetic_pair(texture: View, rng: np.random.Generator, n: int = 256, key: str = 'synth',
                   margin: float = 8.0) -> tuple[View, View, Pair]:
    """A textured-plane pair with exact geometry from ``texture``'s image (undistorted pinhole
    with its K). World = source camera frame; the plane is z = 1."""
    cam = Camera(texture.camera.width, texture.camera.height, texture.camera.K)
    T_ts = random_plane_motion(rng)
    Hm = plane_homography(cam.K, cam.K, T_ts)
    W, H = cam.width, cam.height
    warped = cv2.warpPerspective(texture.image, Hm, (W, H), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128))
    src = View(f'{key}:src', texture.image, cam, np.eye(4))
    tgt = View(f'{key}:tgt', photometric(warped, rng), cam, T_ts)
    uv_s = rng.uniform([margin, margin], [W - 1 - margin, H - 1 - margin], (4 * n, 2))
    X = np.concatenate([cam.undistort_pixels(uv_s), np.ones((len(uv_s), 1))], 1)  # z = 1
    uv_t, ok = visible_in(tgt, X, margin=margin)
    keep = np.nonzero(ok)[0][:n]
    pair = Pair(src.key, tgt.key, uv_s[keep], uv_t[keep],
                float(rotation_angle_deg(np.eye(3), T_ts[:3, :3])), float(ok.mean()),
                meta={'H': Hm})
    return src, tgt, pair
