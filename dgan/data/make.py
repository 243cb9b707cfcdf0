"""`dgan data make`: image folders, zips and .npz arrays -> WebDataset shards.

Every picture is turned into a square `resolution` x `resolution` image with `channels`
channels and encoded as png, jpg or webp:

- EXIF orientation is applied; CMYK, YCbCr, palette, 1-bit, 16-bit (I;16, I) and float
  images are converted; transparent pixels (RGBA, LA, P with transparency) are composited
  on `background` (default white), which also fills the bars of `crop="pad"`.
- crop "center" cuts the largest centred square, "pad" fits the whole picture inside the
  square, "stretch" resizes without keeping the aspect ratio (Lanczos in every case).
- Pictures smaller than the resolution (short side for "center", long side for "pad",
  either side for "stretch") are upscaled (`small="upscale"`) or skipped (`small="skip"`).
- A file that cannot be decoded (empty, truncated, not an image, corrupt chunk, more than
  Pillow's `Image.MAX_IMAGE_PIXELS`) is never fatal: it goes to `OUT/skipped.txt` as
  `path<TAB>reason`, like the pictures skipped for size. Files whose extension is not an
  image extension are ignored and only counted.

Labels: `labels="subdirs"` (the top-level subdirectory is the class), an .npz's `labels`
array, or the `dataset.json` of an NVlabs `dataset_tool.py` folder or zip
(`{"labels": [["00000/img00000000.png", 6], ...]}`), read by default when the source has
one (`labels="dataset.json"` requires it, `labels="none"` ignores it). Every picture must
have exactly one entry, and every entry name a picture, with a class index >= 0; anything
else is a DatasetJsonError naming the file and the entry.

The input order is shuffled with a fixed seed before encoding, and encoding runs in
`workers` processes whose results are consumed in order, so the same input and options
give the same shards whatever the worker count.

Paired data (`make_paired`, image-to-image translation): two folders or zips A and B whose
files are paired by relative path without extension (`x/1.jpg` with `x/1.png`), or one
source of pix2pix-style A|B pictures split at half the width (one source). Each pair
goes through the same steps as a single picture (both images alike) and becomes one
sample with members `a.<ext>` and `b.<ext>`; index.json says `"images": ["a", "b"]`. A
file on one side only, two files for one pair on a side, an undecodable image, or a pair
whose images differ in size (or an A|B picture with an odd width or width != 2 x height)
goes to skipped.txt with the reason. Labels (`subdirs`, dataset.json) are A's.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageColor, ImageOps
from tqdm import tqdm

from dgan.data.dataset_json import DATASET_JSON, DatasetJsonError, parse_dataset_json
from dgan.data.shards import INDEX, encode_image, write_shards

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif",
                            ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".ico"})
SKIPPED = "skipped.txt"
PAIR_KEYS = ("a", "b")  # the image keys of a paired sample
LABEL_MODES = (None, "none", "subdirs", DATASET_JSON)


@dataclass
class MakeOptions:
    """Options of `dgan data make`; None means "decided by the source" (see docs/data.md)."""

    resolution: int | None = None  # folders/zips: 256; npz: min(H, W) of its images
    channels: int | None = None  # folders/zips: 3; npz: from its array shape
    format: str | None = None  # png for npz and 1-channel data, jpg otherwise
    quality: int = 95  # jpg/webp quality
    per_shard: int = 1000
    workers: int = 0  # encoding processes; 0 or 1: in this process
    labels: str | None = None  # "none" | "subdirs" | "dataset.json"; None: the npz's
    # `labels` or the source's dataset.json when it has one, else none
    crop: str = "center"  # "center" | "pad" | "stretch"
    small: str = "upscale"  # "upscale" | "skip"
    background: str = "white"  # colour for transparent pixels and padding
    seed: int = 0  # input order shuffle
    name: str | None = None  # shard name prefix; default: the source's file name stem


class SkipFile(Exception):
    """The picture is not used; the message is the reason written to skipped.txt."""


# -- reading one picture ------------------------------------------------------------------
def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float grayscale -> 8-bit "L" (0..65535 or 0..1 scaled)."""
    array = np.asarray(img)
    if img.mode == "F":
        scale = 255.0 if array.size and float(np.nanmax(array)) <= 1.0 else 1.0
        array = np.nan_to_num(array.astype(np.float64) * scale)
    elif img.mode.startswith("I;16") or (array.size and int(array.max()) > 255):
        array = array.astype(np.float64) / 257.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L")


def to_channels(img: Image.Image, channels: int, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode -> "L" (channels 1) or "RGB" (channels 3); alpha on `background`."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit(img)
    elif img.mode == "1":
        img = img.convert("L")
    if "A" in img.mode or "a" in img.mode:  # RGBA, LA, PA, RGBa, La
        base = Image.new("RGBA", img.size, (*background, 255))
        img = Image.alpha_composite(base, img.convert("RGBA")).convert("RGB")
    return img.convert("L" if channels == 1 else "RGB")


def fit_square(img: Image.Image, resolution: int, crop: str, small: str,
               background: tuple[int, int, int]) -> Image.Image:
    """Crop, pad or stretch to resolution x resolution (Lanczos); SkipFile if too small."""
    w, h = img.size
    side = {"center": min(w, h), "pad": max(w, h), "stretch": min(w, h)}[crop]
    if side < resolution and small == "skip":
        raise SkipFile(f"smaller than {resolution}x{resolution} ({w}x{h})")
    r = resolution
    if crop == "stretch":
        return img.resize((r, r), Image.Resampling.LANCZOS)
    if crop == "center":
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        return img.resize((r, r), Image.Resampling.LANCZOS, box=box)
    scale = r / max(w, h)
    fitted = img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                        Image.Resampling.LANCZOS)
    fill = background[0] if img.mode == "L" else background
    canvas = Image.new(img.mode, (r, r), fill)  # type: ignore[arg-type]
    canvas.paste(fitted, ((r - fitted.width) // 2, (r - fitted.height) // 2))
    return canvas


def open_picture(data: bytes | np.ndarray) -> Image.Image:
    """Decode fully (so truncation shows now); bomb-sized pictures raise SkipFile."""
    if isinstance(data, np.ndarray):
        return Image.fromarray(data)
    if not data:
        raise SkipFile("empty file")
    with warnings.catch_warnings():
        # Above MAX_IMAGE_PIXELS Pillow only warns (it errors above twice that).
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise SkipFile(f"decompression bomb: {e}") from None
    # A broken EXIF block leaves the picture usable as it is stored.
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img)
    return img


# -- the worker side ----------------------------------------------------------------------
_worker: dict[str, Any] = {}


def _init_worker(opts: dict[str, Any], zip_paths: Sequence[str | None]) -> None:
    _worker.clear()
    _worker.update(opts=opts, zips=[zipfile.ZipFile(z) if z else None for z in zip_paths])


def _read(ref: str | np.ndarray, side: int = 0) -> bytes | np.ndarray:
    if isinstance(ref, np.ndarray):
        return ref
    if _worker["zips"][side] is not None:
        return _worker["zips"][side].read(ref)
    return Path(ref).read_bytes()


def _undecodable(e: Exception) -> str:
    return f"cannot decode: {type(e).__name__}: {e}".replace("\n", " ")


def _open_pair(refs: tuple[str, ...], split: bool) -> list[Image.Image]:
    """The A and B pictures of a pair (two files, or one A|B file when `split`)."""
    pictures = []
    for side, ref in enumerate(refs):
        try:
            pictures.append(open_picture(_read(ref, side)))
        except Exception as e:  # noqa: BLE001 - as for a single picture
            side_of = f"{'AB'[side]}: " if len(refs) > 1 else ""  # an A|B file: no side
            why = str(e) if isinstance(e, SkipFile) else _undecodable(e)
            raise SkipFile(side_of + why) from None
    if split:
        (img,) = pictures
        w, h = img.size
        if w % 2:
            raise SkipFile(f"odd width {w} ({w}x{h}): not an A|B pair side by side")
        if w != 2 * h:
            raise SkipFile(f"{w}x{h}: not two square halves side by side (width != 2 x "
                           "height)")
        return [img.crop((0, 0, w // 2, h)), img.crop((w // 2, 0, w, h))]
    (wa, ha), (wb, hb) = pictures[0].size, pictures[1].size
    if (wa, ha) != (wb, hb):
        raise SkipFile(f"mismatched sizes: A {wa}x{ha}, B {wb}x{hb}")
    return pictures


def _convert(task: tuple[Any, int | None]) -> tuple[str, Any, int | None]:
    """(ref, label) -> ("ok", encoded bytes, label) or ("skip", reason, None). A tuple
    ref is a pair: the bytes are then {"a": ..., "b": ...}."""
    ref, label = task
    o = _worker["opts"]
    try:
        if isinstance(ref, tuple):
            pictures = _open_pair(ref, o.get("split", False))
        else:
            pictures = [open_picture(_read(ref))]
        encoded = []
        for img in pictures:
            img = to_channels(img, o["channels"], o["bg"])
            img = fit_square(img, o["resolution"], o["crop"], o["small"], o["bg"])
            encoded.append(encode_image(np.asarray(img), o["format"], o["quality"]))
    except SkipFile as e:
        return "skip", str(e), None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a skipped file, not a crash
        return "skip", _undecodable(e), None
    if isinstance(ref, tuple):
        return "ok", dict(zip(PAIR_KEYS, encoded)), label
    return "ok", encoded[0], label


# -- listing the source -------------------------------------------------------------------
@dataclass
class Listing:
    """What a source holds: tasks (ref, label index), names for skipped.txt, and counts."""

    kind: str
    refs: list[Any]
    names: list[str]
    labels: list[int | None]
    label_names: list[str] | None
    ignored: int
    channels: int
    resolution: int
    zip_path: str | None = None
    # paired listings: one zip (or None) per side; refs are then tuples of one ref per side
    zip_paths: tuple[str | None, ...] | None = None

    @property
    def zips(self) -> tuple[str | None, ...]:
        return self.zip_paths if self.zip_paths is not None else (self.zip_path,)


def _label_of(rel: str, mode: str) -> str | None:
    parts = rel.split("/")
    return parts[0] if mode == "subdirs" and len(parts) > 1 else None


def _is_picture(rel: str) -> bool:
    base = rel.rsplit("/", 1)[-1]
    return not base.startswith(".") and Path(base).suffix.lower() in IMAGE_SUFFIXES


def _listing_from_names(kind: str, names: list[str], refs: list[str], opts: MakeOptions,
                        zip_path: str | None = None, json_labels: dict[str, int] | None = None
                        ) -> tuple[Listing, list[tuple[str, str]]]:
    mode = opts.labels or "none"
    keep, ignored, unlabelled = [], 0, []
    for rel, ref in zip(names, refs):
        if not _is_picture(rel):
            ignored += 1  # .txt, .DS_Store, metadata: not pictures, so not "skipped"
        elif mode == "subdirs" and _label_of(rel, mode) is None:
            unlabelled.append((rel, "not inside a class subdirectory (--labels subdirs)"))
        else:
            keep.append((rel, ref))
    if json_labels is not None:  # dataset_tool's classes are indices already
        labels: list[int | None] = [json_labels[r] for r, _ in keep]
        label_names = [str(i) for i in range(max(json_labels.values(), default=-1) + 1)] or None
    else:
        label_names = sorted({_label_of(r, mode) for r, _ in keep} - {None}) or None  # type: ignore
        lookup = {n: i for i, n in enumerate(label_names or [])}
        labels = [lookup.get(_label_of(r, mode)) if label_names else None  # type: ignore
                  for r, _ in keep]
    listing = Listing(kind, [ref for _, ref in keep], [r for r, _ in keep], labels, label_names,
                      ignored, opts.channels or 3, opts.resolution or 256, zip_path)
    return listing, unlabelled


def list_source(src: str | os.PathLike, opts: MakeOptions) -> tuple[Listing, list[tuple[str, str]]]:
    """The pictures of a folder, .zip or .npz, plus files refused before decoding."""
    path = Path(src)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        names = [p.relative_to(path).as_posix() for p in files]
        json_labels = _dataset_json(names, lambda: (path / DATASET_JSON).read_bytes(),
                                    str(path / DATASET_JSON), opts)
        return _listing_from_names("folder", names, [str(p) for p in files], opts,
                                   json_labels=json_labels)
    if path.suffix.lower() == ".zip" and path.is_file():
        with zipfile.ZipFile(path) as z:
            names = sorted(i.filename for i in z.infolist() if not i.is_dir())
            json_labels = _dataset_json(names, lambda: z.read(DATASET_JSON),
                                        f"{path}:{DATASET_JSON}", opts)
        return _listing_from_names("zip", names, names, opts, zip_path=str(path),
                                   json_labels=json_labels)
    if path.suffix.lower() == ".npz" and path.is_file():
        if opts.labels == DATASET_JSON:
            raise ValueError(f"--labels {DATASET_JSON}: {src} is an .npz, which has its own "
                             "labels")
        return _list_npz(path, opts), []
    raise FileNotFoundError(f"{src}: not an image folder, .zip or .npz")


def _dataset_json(names: list[str], read: Any, where: str, opts: MakeOptions
                  ) -> dict[str, int] | None:
    """The labels of the source's dataset.json, when the options ask for them (default:
    when it has one), else None."""
    if opts.labels not in (None, DATASET_JSON) or (DATASET_JSON not in names
                                                    and opts.labels is None):
        return None
    if DATASET_JSON not in names:
        raise DatasetJsonError(f"--labels {DATASET_JSON}: {where} does not exist")
    labels = parse_dataset_json(read(), where, [n for n in names if _is_picture(n)])
    if labels is None and opts.labels == DATASET_JSON:
        raise DatasetJsonError(f'{where}: "labels" is null (the dataset is unlabelled)')
    return labels


def _list_npz(path: Path, opts: MakeOptions) -> Listing:
    with np.load(path, allow_pickle=False) as data:
        if "images" not in data:
            raise ValueError(f"{path}: no 'images' array (expected uint8 NHW or NHWC)")
        images = data["images"]
        raw_labels = data["labels"] if "labels" in data and opts.labels != "none" else None
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (
            images.ndim == 4 and images.shape[3] not in (1, 3, 4)):
        raise ValueError(f"{path}: images must be uint8 NHW or NHWC with C in 1, 3, 4; got "
                         f"{images.dtype} {images.shape}")
    if opts.labels == "subdirs":
        raise ValueError("--labels subdirs needs a folder or zip; an .npz has its own labels")
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    label_names = labels = None
    if raw_labels is not None:
        labels = [int(v) for v in raw_labels.reshape(-1)]
        label_names = [str(i) for i in range(max(labels) + 1)] if labels else None
    n = len(images)
    return Listing("npz", list(images), [f"{path.name}[{i}]" for i in range(n)],
                   labels or [None] * n, label_names, 0,
                   opts.channels or (1 if images.ndim == 3 else 3),
                   opts.resolution or min(images.shape[1:3]))


# -- the whole conversion -----------------------------------------------------------------
def _results(listing: Listing, order: np.ndarray, opts: dict[str, Any],
             workers: int) -> Iterator[tuple[str, Any, int | None]]:
    tasks = ((listing.refs[i], listing.labels[i]) for i in order)
    if workers <= 1:
        _init_worker(opts, listing.zips)
        try:
            yield from map(_convert, tasks)
        finally:
            for z in _worker["zips"]:
                if z is not None:
                    z.close()
            _worker.clear()
        return
    # spawn, not fork: forking a process whose torch threads hold locks can deadlock
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, _init_worker, (opts, listing.zips)) as pool:
        # imap keeps input order, so the shards do not depend on the worker count.
        yield from pool.imap(_convert, tasks, chunksize=8)


def _check_options(opts: MakeOptions) -> None:
    for key, allowed in (("labels", LABEL_MODES), ("crop", ("center", "pad",
                         "stretch")), ("small", ("upscale", "skip")),
                         ("format", (None, "png", "jpg", "webp")), ("channels", (None, 1, 3))):
        if getattr(opts, key) not in allowed:
            choices = [a for a in allowed if a is not None]
            raise ValueError(f"bad {key} {getattr(opts, key)!r}; expected one of {choices}")


def make_dataset(src: str | os.PathLike, out: str | os.PathLike,
                 opts: MakeOptions | None = None) -> dict:
    """Convert `src` into shards + index.json + skipped.txt in `out`; return the index.

    The index gains "source" (path, kind, options, counts of pictures written, skipped
    and ignored files). Raises ValueError when no picture is usable.
    """
    opts = opts or MakeOptions()
    _check_options(opts)
    listing, refused = list_source(src, opts)
    return _write_dataset(listing, refused, str(Path(src).resolve()),
                          opts.name or Path(src).stem or "data", out, opts, src)


def _write_dataset(listing: Listing, refused: list[tuple[str, str]], path: Any, name: str,
                   out: str | os.PathLike, opts: MakeOptions, src: Any,
                   split: bool = False, images: Sequence[str] | None = None) -> dict:
    """Encode `listing` into shards + index.json + skipped.txt in `out` (see make_dataset).

    `images`: the image keys of a multi-image sample (index.json "images"); `split`: each
    ref is one A|B picture (worker option)."""
    fmt = opts.format or ("png" if listing.kind == "npz" or listing.channels == 1 else "jpg")
    worker_opts = {"channels": listing.channels, "resolution": listing.resolution,
                   "crop": opts.crop, "small": opts.small, "format": fmt,
                   "quality": opts.quality, "bg": ImageColor.getrgb(opts.background)[:3],
                   "split": split}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(opts.seed).permutation(len(listing.refs))
    skipped = list(refused)
    bar = tqdm(total=len(order), unit="img", desc="dgan data make", disable=None)

    def good() -> Iterator[tuple[bytes, str, int | None]]:
        for i, (status, payload, label) in zip(order, _results(listing, order, worker_opts,
                                                               opts.workers)):
            bar.update()
            if status == "ok":
                yield payload, fmt, label
            else:
                skipped.append((listing.names[i], payload))

    source = {"path": path, "kind": listing.kind, "files": len(order),
              "ignored": listing.ignored,
              "options": {**asdict(opts), "format": fmt, "channels": listing.channels,
                          "resolution": listing.resolution}}
    source["options"].pop("workers")

    def extra() -> dict:
        more: dict[str, Any] = {"source": {**source, "skipped": len(skipped)}}
        if images is not None:
            more["images"] = list(images)
            more["source"]["skipped_by"] = skip_kinds(skipped)
        return more

    try:
        index = write_shards(good(), out, name, resolution=listing.resolution,
                             channels=listing.channels, labels=listing.label_names,
                             per_shard=opts.per_shard, extra=extra)
    finally:
        bar.close()
        (out / SKIPPED).write_text("".join(f"{n}\t{r}\n" for n, r in skipped))
    if not index["total"]:
        (out / INDEX).unlink()
        raise ValueError(f"{src}: no usable pictures ({len(skipped)} skipped, "
                         f"{listing.ignored} ignored); see {out / SKIPPED}")
    return index


# -- paired data --------------------------------------------------------------------------
def skip_kinds(skipped: list[tuple[str, str]]) -> dict[str, int]:
    """Skipped pairs by kind: unpaired (one side only, or two files for one side),
    mismatched (sizes, or an A|B layout that does not split), unusable (the rest)."""
    kinds = {"unpaired": 0, "mismatched": 0, "unusable": 0}
    for _, reason in skipped:
        if reason.startswith(("only in ", "several files")):
            kinds["unpaired"] += 1
        elif reason.startswith(("mismatched", "odd width")) or "not two square halves" in reason:
            kinds["mismatched"] += 1
        else:
            kinds["unusable"] += 1
    return kinds


def _stems(listing: Listing, side: str, skipped: list[tuple[str, str]]
           ) -> dict[str, tuple[int, str]]:
    """Relative path without extension -> (index in `listing`, relative path); several
    files for one stem are skipped, each with the reason."""
    by_stem: dict[str, list[int]] = {}
    for i, rel in enumerate(listing.names):
        stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
        by_stem.setdefault(stem, []).append(i)
    one = {}
    for stem, found in by_stem.items():
        if len(found) > 1:
            names = ", ".join(listing.names[i] for i in found)
            skipped += [(listing.names[i], f"several files for one pair in {side}: {names}")
                        for i in found]
        else:
            one[stem] = (found[0], listing.names[found[0]])
    return one


def make_paired(sources: Sequence[str | os.PathLike], out: str | os.PathLike,
                opts: MakeOptions | None = None) -> dict:
    """Paired shards (members a.<ext>, b.<ext>) in `out`; see the module docstring.

    `sources`: (A, B), two folders or zips paired by relative path without extension, or
    (AB,), one folder or zip of A|B pictures side by side. Returns the index, whose
    "source" gains "skipped_by" (see `skip_kinds`). ValueError when no pair is usable.
    """
    opts = opts or MakeOptions()
    _check_options(opts)
    if len(sources) not in (1, 2):
        raise ValueError(f"paired data: expected 2 sources (A, B) or 1 (A|B side by side), "
                         f"got {len(sources)}")
    listings = []
    # labels are A's: B's own dataset.json (if any) is not read; with subdirs, B's files
    # outside a subdirectory are refused like A's (not reported as unpaired)
    b_opts = replace(opts, labels="subdirs" if opts.labels == "subdirs" else "none")
    for k, src in enumerate(sources):
        listing, refused = list_source(src, opts if k == 0 else b_opts)
        if listing.kind == "npz":
            raise ValueError(f"{src}: paired data needs image folders or zips, not an .npz")
        listings.append((listing, refused))
    first, refused = listings[0]
    skipped = list(refused) if len(sources) == 1 else [(n, f"A: {r}") for n, r in refused]
    if len(sources) == 1:
        listing = replace(first, refs=[(r,) for r in first.refs], zip_paths=(first.zip_path,),
                          kind=f"side-by-side {first.kind}")
        path: Any = str(Path(sources[0]).resolve())
    else:
        other, refused_b = listings[1]
        skipped += [(n, f"B: {r}") for n, r in refused_b]
        a, b = _stems(first, "A", skipped), _stems(other, "B", skipped)
        keep = sorted(set(a) & set(b))
        skipped += [(a[s][1], f"only in A: no B file {s}.*") for s in sorted(set(a) - set(b))]
        skipped += [(b[s][1], f"only in B: no A file {s}.*") for s in sorted(set(b) - set(a))]
        listing = replace(
            first, kind=f"paired {first.kind}/{other.kind}",
            refs=[(first.refs[a[s][0]], other.refs[b[s][0]]) for s in keep],
            names=[a[s][1] for s in keep], labels=[first.labels[a[s][0]] for s in keep],
            ignored=first.ignored + other.ignored, zip_paths=(first.zip_path, other.zip_path))
        path = [str(Path(s).resolve()) for s in sources]
    name = opts.name or Path(sources[0]).stem or "data"
    return _write_dataset(listing, skipped, path, name, out, opts, sources[0],
                          split=len(sources) == 1, images=PAIR_KEYS)
