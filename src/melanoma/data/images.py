"""Reading raw images from a folder or a zip (read in place), and the one decode path used everywhere.

`load_image` is shared by `prepare` (raw -> cached JPEG) and `predict` (raw -> model input), so a new image
is preprocessed exactly like the training images were. JPEG, PNG and DICOM (data/dicom.py) are told apart by
content, not by file name.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from melanoma.data.dicom import DICOM_EXTENSIONS, dicom_to_image, is_dicom
from melanoma.errors import MelanomaError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", *DICOM_EXTENSIONS}


@dataclass
class ImageSource:
    """A folder (searched recursively) or a zip of images, indexed by file stem (= ISIC image name)."""

    root: Path
    _zip: zipfile.ZipFile | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def is_zip(self) -> bool:
        return self.root.suffix.lower() == ".zip"

    @property
    def name(self) -> str:
        """A readable name for the `source` column: the zip's stem or the folder's (its parent's if 'images')."""
        root = self.root.resolve()
        if self.is_zip:
            return root.stem
        return root.parent.name if root.name.lower() in {"images", "image", "jpeg", "train"} else root.name

    def index(self) -> tuple[dict[str, str], list[str]]:
        """Map image name -> member path, plus problems (the same name twice)."""
        if not self.root.exists():
            raise MelanomaError(f"{self.root}: images folder or zip not found")
        if self.is_zip:
            members = [m for m in self._open_zip().namelist() if not m.endswith("/")]
        elif self.root.is_dir():
            members = [str(p.relative_to(self.root)) for p in sorted(self.root.rglob("*")) if p.is_file()]
        else:
            raise MelanomaError(f"{self.root}: expected a folder of images or a .zip")
        found: dict[str, str] = {}
        problems: list[str] = []
        for member in sorted(members):
            path = Path(member)
            if path.suffix.lower() not in IMAGE_EXTENSIONS or any(p.startswith((".", "__MACOSX")) for p in path.parts):
                continue
            if path.stem in found:
                problems.append(
                    f"{self.root}/{member}: image name {path.stem} also at {found[path.stem]}; kept the first"
                )
                continue
            found[path.stem] = member
        return found, problems

    def read_bytes(self, member: str) -> bytes:
        if self.is_zip:
            return self._open_zip().read(member)
        return (self.root / member).read_bytes()

    def open(self, member: str) -> BinaryIO:
        """A binary stream of one member, for reading a header without loading the whole file."""
        if self.is_zip:
            return self._open_zip().open(member)
        return (self.root / member).open("rb")

    def _open_zip(self) -> zipfile.ZipFile:
        """Opened lazily, once per process: a worker process gets its own handle."""
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.root)
            except zipfile.BadZipFile:
                raise MelanomaError(f"{self.root}: not a readable zip file") from None
        return self._zip

    def __getstate__(self) -> dict:
        return {"root": self.root, "_zip": None}


def load_image(data: bytes, size: int) -> Image.Image:
    """Decode, honour EXIF orientation, convert to RGB and centre-crop/resize to at most `size` square.

    JPEGs are decoded at a reduced DCT scale (Pillow's draft mode) that never goes below `size`, which makes
    6000x4000 originals ~5x faster to read at equal quality. Smaller images are cropped but not upscaled.
    DICOM files are recognised by content and decoded by pydicom (data/dicom.py), then cropped the same way.
    Raises ValueError with a short reason when the bytes are not a readable image.
    """
    if not data:
        raise ValueError("empty file")
    image = _to_rgb(dicom_to_image(data)) if is_dicom(data) else _decode_with_pillow(data, size)
    side = min(size, *image.size)
    return ImageOps.fit(image, (side, side), method=Image.Resampling.LANCZOS)


def _decode_with_pillow(data: bytes, size: int) -> Image.Image:
    """JPEG or PNG (any format Pillow reads) as RGB, upright, decoded at the smallest DCT scale >= `size`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, rather than warn and decode
            with Image.open(io.BytesIO(data)) as image:
                image.draft("RGB", (size, size))
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image)
    except UnidentifiedImageError:
        raise ValueError("not a JPEG or PNG image") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ValueError(f"refused as a possible decompression bomb: {exc}") from None
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"cannot decode ({exc})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode: 16-bit and float images are rescaled, transparency is flattened onto white."""
    if image.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8))
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
