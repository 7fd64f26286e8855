"""Camera frames as the model wants them: ``(H, W, 3)`` RGB or ``(H, W)`` gray.

Micro-Manager hands colour images over in its own layouts. An RGB camera
(``getNumberOfComponents() == 4``) delivers each pixel as one packed 32-bit
word whose bytes are B, G, R, A in memory (64-bit words of four 16-bit
components for 16-bit-per-channel cameras). ``CMMCorePlus.getImage()``
unpacks a snapped image to ``(H, W, 3)`` RGB through ``fixImage``, but
``getLastImage()`` and ``popNextImage()`` (live mode and sequences) return the
packed ``(H, W)`` words, and some adapters or pymmcore builds return
``(H, W, 4)`` BGRA arrays. :func:`frame_to_rgb` accepts all of these and
:func:`snap_image` snaps through the core and applies it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray
    from pymmcore_plus import CMMCorePlus

__all__ = ["frame_to_rgb", "snap_image"]

#: Channel indices that turn Micro-Manager's B, G, R, A order into R, G, B.
_BGRA_TO_RGB = [2, 1, 0]


def frame_to_rgb(image: Any, *, ncomponents: int | None = None) -> NDArray[Any]:
    """Convert a camera frame to ``(H, W, 3)`` RGB or ``(H, W)`` gray.

    Parameters
    ----------
    image : ndarray
        A frame as pymmcore-plus returns it:

        - ``(H, W)`` gray (any integer or float dtype);
        - ``(H, W)`` packed colour words (``uint32``: 8-bit B, G, R, A bytes;
          ``uint64``: 16-bit B, G, R, A components), Micro-Manager's RGB32 /
          RGB64 formats, as ``getLastImage`` returns them;
        - ``(H, W, 3)`` RGB (``getImage`` after ``fixImage``, Python cameras);
        - ``(H, W, 4)`` B, G, R, A (Micro-Manager's component order);
        - ``(H, W, 1)`` gray.
    ncomponents : int, optional
        The camera's ``core.getNumberOfComponents()`` (1 for gray, 4 for
        RGB). It tells a packed colour frame from a gray frame of the same
        dtype. ``None`` takes a 2-D ``uint32``/``uint64`` frame as packed
        colour (the Micro-Manager RGB convention; pass ``ncomponents=1`` for
        a 32-bit gray camera) and any other 2-D frame as gray.

    Returns
    -------
    ndarray
        C-contiguous ``(H, W, 3)`` RGB (``uint8`` from 8-bit colour cameras,
        ``uint16`` from 16-bit ones) or ``(H, W)`` gray in the input's dtype.
        Alpha is dropped.

    Raises
    ------
    TypeError
        If `image` is not a numeric array (bool, complex and object dtypes
        are refused).
    ValueError
        On an empty frame, an unsupported shape (not 2-D or 3-D with 1, 3 or
        4 channels), `ncomponents` other than None, 1, 3 or 4, or packed
        colour requested for a dtype that cannot hold four components.

    Examples
    --------
    >>> import numpy as np
    >>> bgra = np.array([[[10, 20, 30, 255]]], dtype=np.uint8)  # B, G, R, A
    >>> packed = bgra.view(np.uint32)[..., 0]  # one 32-bit word per pixel
    >>> frame_to_rgb(packed).tolist()
    [[[30, 20, 10]]]
    """
    if ncomponents is not None and ncomponents not in (1, 3, 4):
        raise ValueError(f"ncomponents must be None, 1, 3 or 4, got {ncomponents!r}")
    a = np.asarray(image)
    if a.dtype == np.bool_ or not (
        np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
    ):
        raise TypeError(f"camera frame must have an integer or float dtype, got {a.dtype}")
    if a.size == 0:
        raise ValueError(f"camera frame is empty (shape {a.shape})")
    if a.ndim == 2:
        packed = (
            ncomponents in (3, 4)
            if ncomponents is not None
            else a.dtype.kind == "u" and a.dtype.itemsize in (4, 8)
        )
        if not packed:
            return np.ascontiguousarray(a)
        return _unpack_bgra(a)
    if a.ndim == 3:
        c = a.shape[2]
        if c == 1:
            return np.ascontiguousarray(a[:, :, 0])
        if c == 3:
            return np.ascontiguousarray(a)
        if c == 4:
            return np.ascontiguousarray(a[:, :, _BGRA_TO_RGB])
    raise ValueError(
        "camera frame must be (H, W) gray or packed colour, (H, W, 3) RGB or "
        f"(H, W, 4) BGRA, got shape {a.shape} ({a.dtype})"
    )


def _unpack_bgra(words: NDArray[Any]) -> NDArray[Any]:
    """``(H, W)`` packed B, G, R, A words → ``(H, W, 3)`` RGB components."""
    size = words.dtype.itemsize
    if not np.issubdtype(words.dtype, np.integer) or size not in (4, 8):
        raise ValueError(
            "a packed colour frame must hold 32-bit (8-bit B, G, R, A) or 64-bit "
            f"(16-bit B, G, R, A) integer words, got {words.dtype}"
        )
    # Micro-Manager writes the components in memory order B, G, R, A; native
    # little-endian words view to exactly those bytes.
    le = np.ascontiguousarray(words, dtype=words.dtype.newbyteorder("<"))
    comp = le.view(np.dtype(f"<u{size // 4}")).reshape((*words.shape, 4))
    rgb: NDArray[Any] = np.ascontiguousarray(comp[:, :, _BGRA_TO_RGB], dtype=f"u{size // 4}")
    return rgb


def snap_image(core: CMMCorePlus) -> NDArray[Any]:
    """Snap one image with the core's current camera and return it as RGB or gray.

    Parameters
    ----------
    core : CMMCorePlus
        Any pymmcore-plus core (``CMMCorePlus`` or ``UniMMCore``) with a camera.

    Returns
    -------
    ndarray
        ``(H, W, 3)`` RGB or ``(H, W)`` gray (see :func:`frame_to_rgb`).

    Raises
    ------
    RuntimeError, ValueError, TypeError
        Whatever the core raises on snapping (no camera, device error), and
        :func:`frame_to_rgb`'s errors on an unsupported frame.

    Notes
    -----
    Only the public API is used: ``snapImage()`` then ``getImage()``, whose
    result ``frame_to_rgb`` interprets with ``getNumberOfComponents()``. The
    caller waits for moving stages first (``snapImage`` itself waits only for
    the exposure). Integer frames keep their dtype: a 12-bit camera delivers
    ``uint16`` values up to 4095, which the model scales by the dtype's
    maximum.
    """
    core.snapImage()
    image = core.getImage()
    ncomp = int(core.getNumberOfComponents())
    return frame_to_rgb(image, ncomponents=ncomp if ncomp in (1, 3, 4) else None)
