"""Classical focus (sharpness) measures for microscope autofocus.

Every measure maps one image to a scalar that is largest when the image is in
focus. They are the "hill-climbing" baselines that the SparseFocus paper
(Zhai et al. 2025) contrasts with one-shot defocus prediction, and the Brenner
gradient is the measure it uses to label the focal plane of each z-stack.

All measures are normalised by the number of terms (means instead of sums), so
that crops of different sizes of the same texture give comparable values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

__all__ = [
    "FOCUS_MEASURES",
    "FocusMeasure",
    "brenner",
    "focus_curve",
    "get_focus_measure",
    "normalized_variance",
    "spectral_energy",
    "tenengrad",
    "variance_of_laplacian",
    "vollath_f4",
    "vollath_f5",
]


class FocusMeasure(Protocol):
    """Signature of a focus measure: ``f(image, *, channel_axis=None) -> float``."""

    def __call__(self, image: ArrayLike, *, channel_axis: int | None = None) -> float:
        """Return the sharpness of `image` (larger is sharper)."""
        ...


#: ITU-R BT.601 luma weights for R, G, B.
_LUMA_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float64)

#: Guard for divisions by a mean or a total power that may vanish.
_EPS = 1e-12

#: Lower edge of the high-frequency band used by :func:`spectral_energy`, in
#: units of the Nyquist frequency (0.5 cycles / pixel).
_SPECTRAL_CUTOFF = 0.25

_MIN_SIZE = 3


def _check_dtype(dtype: np.dtype[Any]) -> None:
    if dtype == np.bool_:
        return
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise TypeError(f"image must have a real numeric or boolean dtype, got dtype {dtype!s}")


def _as_gray(image: ArrayLike, channel_axis: int | None) -> NDArray[np.float64]:
    """Validate one image and return it as a 2-D float64 gray image.

    Only this one plane is converted to float64, never a whole stack.
    """
    arr = np.asarray(image)
    _check_dtype(arr.dtype)
    if channel_axis is None:
        if arr.ndim != 2:
            raise ValueError(
                f"image must be 2-D (Y, X) when channel_axis is None, got shape {arr.shape}"
            )
        gray = arr.astype(np.float64, copy=False)
    else:
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
            raise TypeError(f"channel_axis must be an int or None, got {channel_axis!r}")
        if arr.ndim != 3:
            raise ValueError(
                "image must be 3-D (two spatial axes and one colour axis) when channel_axis "
                f"is given, got shape {arr.shape}"
            )
        if not -arr.ndim <= channel_axis < arr.ndim:
            raise ValueError(
                f"channel_axis={channel_axis} is out of range for an image of shape {arr.shape}"
            )
        moved = np.moveaxis(arr, int(channel_axis), -1)
        n_channels = moved.shape[-1]
        if n_channels == 1:
            gray = moved[..., 0].astype(np.float64)
        elif n_channels in (3, 4):
            rgb = moved[..., :3].astype(np.float64)
            gray = rgb @ _LUMA_BT601
        else:
            raise ValueError(
                "the colour axis must have 1 (gray), 3 (RGB) or 4 (RGBA) channels, "
                f"got {n_channels} channels in an image of shape {arr.shape}"
            )
    if gray.shape[0] < _MIN_SIZE or gray.shape[1] < _MIN_SIZE:
        raise ValueError(
            f"image must be at least {_MIN_SIZE}x{_MIN_SIZE} pixels, got spatial shape {gray.shape}"
        )
    if not np.all(np.isfinite(gray)):
        raise ValueError("image contains NaN or infinite values")
    return gray


def _is_uniform(g: NDArray[np.float64]) -> bool:
    """Return True if all pixels are equal (mean-based measures are exactly 0 then)."""
    return bool(np.all(g == g.flat[0]))


def brenner(image: ArrayLike, *, channel_axis: int | None = None) -> float:
    """Brenner gradient: mean squared difference of pixels two apart.

    Parameters
    ----------
    image : array_like
        2-D gray image, or 3-D image with a colour axis given by
        `channel_axis`. Any real numeric or boolean dtype; values are
        converted to float64 without rescaling.
    channel_axis : int, optional
        Axis holding the colour channels (1, 3 or 4 of them). RGB(A) is
        converted to gray with ITU-R BT.601 luma on the first three channels.

    Returns
    -------
    float
        ``mean((I[y, x+2] - I[y, x])**2) + mean((I[y+2, x] - I[y, x])**2)``,
        in squared intensity units. 0 for a uniform image.

    Raises
    ------
    TypeError
        If the dtype is not numeric.
    ValueError
        If the shape is wrong, the image is smaller than 3x3, or it contains
        NaN or infinite values.

    Notes
    -----
    Brenner et al. (1976) sum the squared difference along x only. Here both
    axes are used (as in the SparseFocus labelling of focal planes), and each
    directional sum is replaced by its mean so that the value does not grow
    with the image size.

    References
    ----------
    .. [1] J. F. Brenner et al., "An automated microscope for cytologic
       research: a preliminary evaluation", J. Histochem. Cytochem. 24(1),
       100-111 (1976).
    .. [2] Y. Zhai et al., "SparseFocus: Learning-based one-shot autofocus
       for microscopy with sparse content", arXiv:2502.06452 (2025).
    """
    g = _as_gray(image, channel_axis)
    dx = g[:, 2:] - g[:, :-2]
    dy = g[2:, :] - g[:-2, :]
    return float(np.mean(dx * dx) + np.mean(dy * dy))


def tenengrad(image: ArrayLike, *, channel_axis: int | None = None) -> float:
    """Tenengrad: mean squared Sobel gradient magnitude.

    Parameters
    ----------
    image : array_like
        2-D gray image, or 3-D image with a colour axis (see :func:`brenner`).
    channel_axis : int, optional
        Axis holding the colour channels.

    Returns
    -------
    float
        ``mean(Gx**2 + Gy**2)`` over the interior pixels, where ``Gx`` and
        ``Gy`` are the 3x3 Sobel responses. 0 for a uniform image.

    Notes
    -----
    Only "valid" pixels (those whose 3x3 neighbourhood lies inside the
    image) are used, so no boundary padding leaks into the value. No
    gradient threshold is applied (the threshold of the original method is
    scene-dependent); the mean replaces the sum for size independence.

    References
    ----------
    .. [1] J. M. Tenenbaum, "Accommodation in computer vision", PhD thesis,
       Stanford University (1970).
    .. [2] E. Krotkov, "Focusing", Int. J. Comput. Vision 1, 223-237 (1987).
    """
    g = _as_gray(image, channel_axis)
    # Sobel as separable smoothing [1, 2, 1] and central difference [-1, 0, 1].
    smooth_y = g[:-2, :] + 2.0 * g[1:-1, :] + g[2:, :]
    gx = smooth_y[:, 2:] - smooth_y[:, :-2]
    smooth_x = g[:, :-2] + 2.0 * g[:, 1:-1] + g[:, 2:]
    gy = smooth_x[2:, :] - smooth_x[:-2, :]
    return float(np.mean(gx * gx + gy * gy))


def variance_of_laplacian(image: ArrayLike, *, channel_axis: int | None = None) -> float:
    """Variance of the 4-neighbour Laplacian.

    Parameters
    ----------
    image : array_like
        2-D gray image, or 3-D image with a colour axis (see :func:`brenner`).
    channel_axis : int, optional
        Axis holding the colour channels.

    Returns
    -------
    float
        Population variance of ``L = I[y-1,x] + I[y+1,x] + I[y,x-1] +
        I[y,x+1] - 4 I[y,x]`` over the interior pixels. 0 for a uniform image.

    Notes
    -----
    A variance is already a mean, so the value is size-independent.

    References
    ----------
    .. [1] J. L. Pech-Pacheco, G. Cristóbal, J. Chamorro-Martínez and
       J. Fernández-Valdivia, "Diatom autofocusing in brightfield microscopy:
       a comparative study", Proc. ICPR 2000, vol. 3, 314-317.
    """
    g = _as_gray(image, channel_axis)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(np.var(lap))


def normalized_variance(image: ArrayLike, *, channel_axis: int | None = None) -> float:
    """Normalised variance: intensity variance divided by the mean intensity.

    Parameters
    ----------
    image : array_like
        2-D gray image, or 3-D image with a colour axis (see :func:`brenner`).
    channel_axis : int, optional
        Axis holding the colour channels.

    Returns
    -------
    float
        ``var(I) / max(|mean(I)|, 1e-12)``. 0 for a uniform image (including
        an all-zero image).

    Notes
    -----
    Dividing by the mean compensates for changes of illumination brightness
    between planes. The absolute value and the tiny floor on the denominator
    keep the value finite and non-negative for images of zero or negative
    mean (which do not occur for raw intensities).

    References
    ----------
    .. [1] F. C. A. Groen, I. T. Young and G. Ligthart, "A comparison of
       different focus functions for use in autofocus algorithms",
       Cytometry 6, 81-91 (1985).
    .. [2] A. Santos et al., "Evaluation of autofocus functions in molecular
       cytogenetic analysis", J. Microsc. 188(3), 264-272 (1997).
    """
    g = _as_gray(image, channel_axis)
    if _is_uniform(g):
        return 0.0
    mean = float(np.mean(g))
    var = float(np.var(g))
    return var / max(abs(mean), _EPS)


def vollath_f4(image: ArrayLike, *, channel_axis: int | None = None) -> float:
    """Vollath's F4 autocorrelation measure (lag 1 minus lag 2).

    Parameters
    ----------
    image : array_like
        2-D gray image, or 3-D image with a colour axis (see :func:`brenner`).
    channel_axis : int, optional
        Axis holding the colour channels.

    Returns
    -------
    float
        ``mean(I[x] I[x+1]) - mean(I[x] I[x+2])`` along x plus the same along
        y, each mean taken over the same set of base pixels ``x`` so that a
        uniform image gives exactly 0.

    Notes
    -----
    Vollath's F4 (as written in Santos et al. 1997) is
    ``sum g(i,j) g(i+1,j) - sum g(i,j) g(i+2,j)`` along one axis. This
    implementation adds the same term along the other axis (isotropy) and
    uses means over a common range of base pixels instead of sums (size
    independence; with sums over different ranges a uniform image would not
    score 0). F4 is insensitive to uncorrelated noise, whose autocorrelation
    vanishes at lags 1 and 2.

    References
    ----------
    .. [1] D. Vollath, "Automatic focusing by correlative methods",
       J. Microsc. 147(3), 279-288 (1987).
    .. [2] D. Vollath, "The influence of the scene parameters and of noise on
       the behaviour of automatic focusing algorithms", J. Microsc. 151(2),
       133-146 (1988).
    .. [3] A. Santos et al., "Evaluation of autofocus functions in molecular
       cytogenetic analysis", J. Microsc. 188(3), 264-272 (1997).
    """
    g = _as_gray(image, channel_axis)
    fx = np.mean(g[:, :-2] * (g[:, 1:-1] - g[:, 2:]))
    fy = np.mean(g[:-2, :] * (g[1:-1, :] - g[2:, :]))
    return float(fx + fy)


def vollath_f5(image: ArrayLike, *, channel_axis: int | None = None) -> float:
    """Vollath's F5 autocorrelation measure (lag-1 autocovariance).

    Parameters
    ----------
    image : array_like
        2-D gray image, or 3-D image with a colour axis (see :func:`brenner`).
    channel_axis : int, optional
        Axis holding the colour channels.

    Returns
    -------
    float
        ``mean(I[x] I[x+1]) - mean(I)**2`` along x plus the same along y.
        0 for a uniform image.

    Notes
    -----
    Santos et al. (1997) write F5 as ``sum g(i,j) g(i+1,j) - M N mean**2``
    along one axis; here the sum is replaced by a mean and both axes are
    used. To avoid catastrophic cancellation for bright images, the
    expression is evaluated on the mean-subtracted image ``d = I - m`` with
    the algebraically identical form
    ``mean(d[x] d[x+1]) + m (mean(d[x]) + mean(d[x+1]))``.

    References
    ----------
    .. [1] D. Vollath, "The influence of the scene parameters and of noise on
       the behaviour of automatic focusing algorithms", J. Microsc. 151(2),
       133-146 (1988).
    .. [2] A. Santos et al., "Evaluation of autofocus functions in molecular
       cytogenetic analysis", J. Microsc. 188(3), 264-272 (1997).
    """
    g = _as_gray(image, channel_axis)
    if _is_uniform(g):
        return 0.0
    m = float(np.mean(g))
    d = g - m
    fx = np.mean(d[:, :-1] * d[:, 1:]) + m * (np.mean(d[:, :-1]) + np.mean(d[:, 1:]))
    fy = np.mean(d[:-1, :] * d[1:, :]) + m * (np.mean(d[:-1, :]) + np.mean(d[1:, :]))
    return float(fx + fy)


def spectral_energy(image: ArrayLike, *, channel_axis: int | None = None) -> float:
    """Fraction of the image's Fourier power at high spatial frequencies.

    Parameters
    ----------
    image : array_like
        2-D gray image, or 3-D image with a colour axis (see :func:`brenner`).
    channel_axis : int, optional
        Axis holding the colour channels.

    Returns
    -------
    float
        Fraction in [0, 1] of the non-DC power spectrum at normalised radial
        frequency ``rho = |f| / f_Nyquist >= 0.25`` (``|f| >= 0.125``
        cycles/pixel). 0 for a uniform image.

    Notes
    -----
    The image is mean-subtracted and multiplied by a separable Hann window
    (to suppress the spurious broadband power of the periodic-boundary
    discontinuity) before the FFT. The DC term is excluded from both the
    numerator and the denominator. Being a ratio, the value is independent
    of image size, brightness and contrast. Defocus acts as a low-pass
    filter whose attenuation grows with frequency, so the fraction of power
    above a fixed cut-off decreases monotonically with blur. The band has no
    upper limit: this keeps that monotonicity exact for a pure low-pass
    blur, at the price of counting white camera noise as detail (noise sets
    a floor under the curve).

    References
    ----------
    .. [1] L. Firestone, K. Cook, K. Culp, N. Talsania and K. Preston,
       "Comparison of autofocus methods for automated microscopy",
       Cytometry 12, 195-206 (1991).
    .. [2] F. C. A. Groen, I. T. Young and G. Ligthart, "A comparison of
       different focus functions for use in autofocus algorithms",
       Cytometry 6, 81-91 (1985).
    """
    g = _as_gray(image, channel_axis)
    if _is_uniform(g):
        return 0.0
    ny, nx = g.shape
    d = g - np.mean(g)
    window = np.outer(np.hanning(ny + 2)[1:-1], np.hanning(nx + 2)[1:-1])
    spectrum = np.fft.rfft2(d * window)
    power = spectrum.real**2 + spectrum.imag**2
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.rfftfreq(nx)[None, :]
    rho = np.sqrt(fy * fy + fx * fx) / 0.5
    # rfft2 stores only half of the spectrum: the columns other than the
    # first (and the last, for even nx) stand for two conjugate frequencies.
    weight = np.full(power.shape[1], 2.0)
    weight[0] = 1.0
    if nx % 2 == 0:
        weight[-1] = 1.0
    power = power * weight[None, :]
    power[0, 0] = 0.0
    total = float(np.sum(power))
    if total <= 0.0:
        return 0.0
    return float(np.sum(power[rho >= _SPECTRAL_CUTOFF]) / total)


FOCUS_MEASURES: dict[str, FocusMeasure] = {
    "brenner": brenner,
    "tenengrad": tenengrad,
    "variance_of_laplacian": variance_of_laplacian,
    "normalized_variance": normalized_variance,
    "vollath_f4": vollath_f4,
    "vollath_f5": vollath_f5,
    "spectral_energy": spectral_energy,
}
"""Focus measures by name."""


def get_focus_measure(name: str) -> FocusMeasure:
    """Return the focus measure registered under `name`.

    Parameters
    ----------
    name : str
        One of the keys of :data:`FOCUS_MEASURES`.

    Returns
    -------
    callable
        ``f(image, *, channel_axis=None) -> float``.

    Raises
    ------
    TypeError
        If `name` is not a string.
    ValueError
        If `name` is not a known measure; the message lists the valid names.
    """
    if not isinstance(name, str):
        raise TypeError(f"focus measure name must be a str, got {type(name).__name__}")
    try:
        return FOCUS_MEASURES[name]
    except KeyError:
        valid = ", ".join(sorted(FOCUS_MEASURES))
        raise ValueError(f"unknown focus measure {name!r}; valid names: {valid}") from None


def _resolve_measure(measure: str | FocusMeasure) -> tuple[FocusMeasure, str]:
    """Return the measure function and a name for it."""
    if isinstance(measure, str):
        return get_focus_measure(measure), measure
    if callable(measure):
        return measure, getattr(measure, "__name__", repr(measure))
    raise TypeError(f"measure must be a measure name or a callable, got {type(measure).__name__}")


def focus_curve(
    stack: ArrayLike,
    measure: str | FocusMeasure = "brenner",
    *,
    channel_axis: int | None = None,
) -> NDArray[np.float64]:
    """Evaluate a focus measure on every plane of a z-stack.

    Parameters
    ----------
    stack : array_like
        Stack of images along axis 0: ``(Z, Y, X)`` gray, or e.g.
        ``(Z, Y, X, C)`` colour. May be a numpy memmap larger than memory:
        planes are read and converted to float one at a time.
    measure : str or callable, default "brenner"
        Name in :data:`FOCUS_MEASURES`, or a callable with the same
        signature.
    channel_axis : int, optional
        Colour axis of *one plane* (e.g. ``-1`` for a ``(Z, Y, X, 3)`` RGB
        stack), passed to the measure.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(Z,)``, one value per plane.

    Raises
    ------
    ValueError
        If the stack is empty, has fewer than one axis besides z, or the
        measure name is unknown (plus any error of the measure on a plane).
    """
    func, _ = _resolve_measure(measure)
    # np.asarray keeps memmaps and arrays as views (no copy, no float cast).
    arr = stack if isinstance(stack, np.ndarray) else np.asarray(stack)
    if arr.ndim >= 1 and arr.shape[0] == 0:
        raise ValueError(f"stack is empty: no planes along axis 0 (shape {arr.shape})")
    if arr.ndim < 3:
        raise ValueError(f"stack must have shape (Z, Y, X) or (Z, Y, X, C), got shape {arr.shape}")
    out = np.empty(arr.shape[0], dtype=np.float64)
    for k in range(arr.shape[0]):
        out[k] = float(func(arr[k], channel_axis=channel_axis))
    return out
