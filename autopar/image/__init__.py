"""The image pipeline: passes over one TIFF stack (:mod:`.passes`), ``autopar pack`` over a
folder of them and the demo data (:mod:`.pack`)."""

from .passes import *  # noqa: F401,F403
from .passes import RenderJob, STRETCH_MODES, Z_CROP_METHODS, __all__ as _passes_all

__all__ = [*_passes_all, "RenderJob", "STRETCH_MODES", "Z_CROP_METHODS"]
