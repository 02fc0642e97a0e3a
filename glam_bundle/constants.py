"""Names and sizes shared by the whole bundle (as the original GLAM's ``src/constants.py``).

Every module takes these from here; configs repeat only the sizes a user may override on the command line
(``image_size``, ``crop_size``), with these values as defaults.
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = [
    "CLASS_NAMES",
    "VIEWS",
    "LATERALITIES",
    "MODEL_FRAME_SIZE",
    "PATCH_SIZE",
    "BREAST_MASK_EROSION",
    "BREAST_CROP_BUFFER",
    "NYU_PIXEL_SPACING_MM",
    "IMAGE_KEY",
    "MASK_FILE_KEYS",
    "FILE_KEYS",
    "LABEL_MAP_KEY",
    "SPLITS",
    "FAILURES_KEY",
    "PIL_SUFFIXES",
    "DICOM_SUFFIXES",
    "NIFTI_SUFFIXES",
    "ITK_SUFFIXES",
    "LISTED_IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_BYTES",
    "GRAY_CHANNEL_TOLERANCE",
    "CHEST_WALL_CLEAR_RATIO",
    "JPEG_BLOCK",
    "SMALL_BREAST_WINDOW_SHARE",
    "TINY_NETWORK",
]

# Image-level classes in channel order: label (N, 2), saliency maps (N, 2, H, W), masks (N, 2, H, W).
CLASS_NAMES: tuple[str, ...] = ("benign", "malignant")
# Mammographic views and breast lateralities the preprocessing knows.
VIEWS: tuple[str, ...] = ("CC", "MLO")
LATERALITIES: tuple[str, ...] = ("L", "R")

# The model frame (H, W): every image is windowed to this size, as in the paper.
MODEL_FRAME_SIZE: tuple[int, int] = (2944, 1920)
# Local-module patch size (rows, cols) in model-frame pixels.
PATCH_SIZE: tuple[int, int] = (512, 512)
# The original preprocessing's pixel constants (glam_reference.md §5.1), for raw images near the model frame's
# size: the breast mask's erosion/dilation iterations and the crop buffer around the breast.
BREAST_MASK_EROSION = 100
BREAST_CROP_BUFFER = 50
# Pixel spacing assumed for the NYU model frame. Not stated by the GLAM authors: NYU's screening mammograms were
# acquired on full-field digital units whose detector pitch is 0.07-0.1 mm; 0.1 mm makes the 2944-row window
# 29.4 cm tall (a 24x30 cm detector) and the sample CC views (2023 and 2144 rows) 20-21 cm, both anatomically
# plausible. Treat it as an assumption when resampling other data to the NYU scale.
NYU_PIXEL_SPACING_MM: float = 0.1

# Datalist item keys: the image file and the per-class lesion mask files (channel order of CLASS_NAMES).
IMAGE_KEY = "image"
MASK_FILE_KEYS: tuple[str, ...] = tuple(f"mask_{name}" for name in CLASS_NAMES)
# A label image of both classes at once (0 background, 1 benign, 2 malignant), as MONAI Label's datastore keeps
# them; the load chain splits it into the per-class masks and labels.
LABEL_MAP_KEY = "label_map"
FILE_KEYS: tuple[str, ...] = (IMAGE_KEY, *MASK_FILE_KEYS, LABEL_MAP_KEY)
# Datalist splits, in the order of MONAI's decathlon-style datalists.
SPLITS: tuple[str, ...] = ("training", "validation", "test")

# Batch key under which the bundle's collate function lists the cases that failed to load.
FAILURES_KEY = "failures"

# File suffixes of each reader backend (glam_bundle.data.readers) and those a folder listing picks up.
PIL_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pgm", ".ppm", ".bmp")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
ITK_SUFFIXES: tuple[str, ...] = (".mha", ".mhd", ".nrrd", ".nhdr")
# Folder listings pick up every suffix a reader takes (and DICOM files without a suffix, by their magic bytes).
LISTED_IMAGE_SUFFIXES: tuple[str, ...] = PIL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES + ITK_SUFFIXES

# Size limits of one input image, checked from the file's header before any pixel is decoded
# (glam_bundle.data.readers.MammogramReader(max_pixels=..., max_bytes=...)): the largest real mammograms are
# under 8,000x8,000 pixels at 16 bits (64 Mpixel, 128 MB decoded); a file declaring more is refused by name.
MAX_IMAGE_PIXELS: int = 8000 * 8000
MAX_IMAGE_BYTES: int = 8000 * 8000 * 2
# Largest spread between the colour channels of a pixel, as a share of the image's value range, for which an RGB(A)
# or palette file still counts as a gray mammogram (glam_bundle.data.image_checks.gray_from_channels): a gray image
# stored as colour JPEG (chroma subsampling, ringing) differs by a few levels of 255.
GRAY_CHANNEL_TOLERANCE: float = 0.02
# When the breast's outer tenth on one side holds at least this many times the pixels of the other's, the image
# itself says where the chest wall is, and that decides the orientation even against the laterality tag (a view
# stored mirrored, a wrong tag); the shared sets' views give 2.3-44, one ambiguous mini-MIAS view 1.2
# (glam_bundle.transforms.breast.array.chest_wall_evidence).
CHEST_WALL_CLEAR_RATIO: float = 2.0
# JPEG codes 8x8-pixel blocks: its ringing stays within one block of an edge (the film pixel rule sets it aside).
JPEG_BLOCK: float = 8.0
# A breast whose crop covers less than this share of the model window, in an image of unknown pixel spacing, is
# likely a downscaled copy (a bare mini-MIAS film at 0.2 mm: 0.08-0.12; CSAW-S halved: 0.12-0.16; full-scale views
# 0.20-0.53): the run then says once how to give the spacing (glam_bundle.transforms.spatial.BestCenterWindowd).
SMALL_BREAST_WINDOW_SHARE: float = 1 / 6

# GLAM keyword arguments of the narrowest network the tests and the benchmarks' smoke presets build (a few thousand
# parameters): not a model to train, one that runs every code path in seconds. Config overrides:
# {f"network_def#{k}": v for k, v in TINY_NETWORK.items()}.
TINY_NETWORK = MappingProxyType({
    "global_channels": (4, 8, 8, 8, 8),
    "global_blocks_per_stage": 1,
    "local_layers": (1, 1, 1, 1),
    "local_channels": (8, 8, 8, 16),
})
