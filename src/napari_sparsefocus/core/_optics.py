"""Optical parameters of a brightfield microscope."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["Optics"]


@dataclass(frozen=True)
class Optics:
    """Optical parameters of a transmitted-light brightfield microscope.

    All lengths are in micrometres. The default is a brightfield pathology
    scanner close to the SparseFocus whole-slide imager: a 20x / 0.75 NA dry
    objective with residual axial colour, a 2448 x 2048 global-shutter CMOS with 3.45 µm pixels (the
    paper crops 2016 x 2016 of that sensor), a white LED seen through the RGB
    Bayer filter, and specimens mounted in a medium of index 1.52 under a
    #1.5 coverslip. The dry objective imaging into the index-1.52 mount is
    the refractive-index mismatch that makes the point-spread function
    asymmetric about focus (Gibson & Lanni 1991).

    Parameters
    ----------
    na : float
        Numerical aperture of the objective. Must satisfy
        ``0 < na < min(immersion_index, sample_index, coverslip_index)``.
    magnification : float
        Total magnification from sample to camera.
    camera_pixel_size_um : float
        Physical pixel pitch of the camera sensor.
    wavelengths_um : tuple of float
        Centre wavelength of each colour channel, in channel order (R, G, B
        for brightfield). One entry gives a monochrome camera.
    immersion_index, immersion_index_design : float
        Refractive index of the immersion medium, actual and design (air: 1.0).
    sample_index : float
        Refractive index of the mounting medium the specimen sits in.
    coverslip_index, coverslip_index_design : float
        Refractive index of the coverslip glass, actual and design.
    coverslip_thickness_um, coverslip_thickness_design_um : float
        Coverslip thickness, actual and design (#1.5 coverslip: 170 µm).
    working_distance_um : float
        Design thickness of the immersion layer (objective working distance).
    specimen_depth_um : float
        Depth below the coverslip of the specimen's mid-plane (default 10 µm:
        the middle of a 4 µm section under ~8 µm of mounting medium). Content
        deeper in the mount sees more spherical aberration.
    axial_chromatic_um : tuple of float
        Residual longitudinal (axial) chromatic aberration of the objective,
        as the shift of the in-focus stage position with wavelength:
        ``Δz(λ) = a (λ - λ_r)/0.1 + b ((λ - 0.55)² - (λ_r - 0.55)²)/0.01``
        with ``(a, b)`` these two coefficients (µm per 100 nm, µm per
        (100 nm)²) and ``λ_r`` the reference wavelength, whose focus is
        therefore unshifted. The default ``(-1.0, 0.1)`` is a 20x plan
        achromat/fluorite: red (610 nm) comes to focus about 0.75 µm lower
        and blue (460 nm) about 0.8 µm higher than green, 1.5 µm (1.3 depths
        of field) across the RGB channels. It is the strongest cue to the
        *sign* of defocus in an RGB image; ``(0, 0)`` is a perfect
        apochromat, whose sign cue is only the spherical aberration.
    condenser_na : float
        Numerical aperture of the condenser (partially coherent Köhler
        illumination); the coherence parameter is ``condenser_na / na``.
    full_well_e : float
        Camera full-well capacity in electrons (shot noise scale).
    read_noise_e : float
        Camera read noise in electrons (RMS).
    bit_depth : int
        Camera ADC bit depth.

    Notes
    -----
    Sample pixel size is ``camera_pixel_size_um / magnification`` (0.1725 µm
    for the default), so the 2016 px crop spans 348 µm, and Nyquist sampling
    of the incoherent cut-off ``2 NA / λ`` holds for red and green light.
    """

    na: float = 0.75
    magnification: float = 20.0
    camera_pixel_size_um: float = 3.45
    wavelengths_um: tuple[float, ...] = (0.61, 0.53, 0.46)
    immersion_index: float = 1.0
    immersion_index_design: float = 1.0
    sample_index: float = 1.52
    coverslip_index: float = 1.522
    coverslip_index_design: float = 1.522
    coverslip_thickness_um: float = 170.0
    coverslip_thickness_design_um: float = 170.0
    working_distance_um: float = 600.0
    specimen_depth_um: float = 10.0
    axial_chromatic_um: tuple[float, float] = (-1.0, 0.1)
    condenser_na: float = 0.55
    full_well_e: float = 10500.0
    read_noise_e: float = 2.4
    bit_depth: int = 8

    def __post_init__(self) -> None:
        positive = (
            "na",
            "magnification",
            "camera_pixel_size_um",
            "immersion_index",
            "immersion_index_design",
            "sample_index",
            "coverslip_index",
            "coverslip_index_design",
            "working_distance_um",
            "full_well_e",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"Optics.{name} must be a finite number > 0, got {value!r}")
        for name in (
            "coverslip_thickness_um",
            "coverslip_thickness_design_um",
            "specimen_depth_um",
            "read_noise_e",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Optics.{name} must be a finite number >= 0, got {value!r}")
        for name in (
            "immersion_index",
            "immersion_index_design",
            "sample_index",
            "coverslip_index",
            "coverslip_index_design",
        ):
            if getattr(self, name) < 1.0:
                raise ValueError(
                    f"Optics.{name} must be >= 1 (a refractive index), got {getattr(self, name)!r}"
                )
        limit = min(
            self.immersion_index,
            self.immersion_index_design,
            self.sample_index,
            self.coverslip_index,
            self.coverslip_index_design,
        )
        if self.na >= limit:
            raise ValueError(
                f"Optics.na={self.na} must be smaller than every refractive index in the "
                f"path (smallest is {limit})"
            )
        if not (0 < self.condenser_na <= self.na):
            raise ValueError(
                f"Optics.condenser_na must be in (0, na={self.na}], got {self.condenser_na!r}"
            )
        wl = tuple(float(w) for w in self.wavelengths_um)
        if not wl or any(not math.isfinite(w) or not (0.2 <= w <= 2.0) for w in wl):
            raise ValueError(
                "Optics.wavelengths_um must hold 1 or more wavelengths between 0.2 and 2 µm, "
                f"got {self.wavelengths_um!r}"
            )
        object.__setattr__(self, "wavelengths_um", wl)
        ca = tuple(float(c) for c in self.axial_chromatic_um)
        if len(ca) != 2 or not all(math.isfinite(c) and abs(c) <= 20.0 for c in ca):
            raise ValueError(
                "Optics.axial_chromatic_um must be two finite coefficients (µm per 100 nm, "
                f"µm per (100 nm)²) of magnitude <= 20, got {self.axial_chromatic_um!r}"
            )
        object.__setattr__(self, "axial_chromatic_um", ca)
        if int(self.bit_depth) != self.bit_depth or not (1 <= self.bit_depth <= 16):
            raise ValueError(
                f"Optics.bit_depth must be an integer in 1..16, got {self.bit_depth!r}"
            )

    # ------------------------------------------------------------------ derived
    @property
    def pixel_size_um(self) -> float:
        """Pixel size in the sample plane (µm): camera pixel / magnification."""
        return self.camera_pixel_size_um / self.magnification

    @property
    def n_channels(self) -> int:
        """Number of colour channels (one per wavelength)."""
        return len(self.wavelengths_um)

    @property
    def reference_wavelength_um(self) -> float:
        """Wavelength used for scalar figures such as the depth of field (the median)."""
        wl = sorted(self.wavelengths_um)
        return wl[len(wl) // 2]

    def chromatic_focus_shift_um(self, wavelength_um: float) -> float:
        """Return the in-focus stage shift (µm) of ``wavelength_um`` relative to the reference.

        Parameters
        ----------
        wavelength_um : float
            Wavelength (µm).

        Returns
        -------
        float
            ``Δz(λ)`` of :attr:`axial_chromatic_um`; zero at the reference
            wavelength and for an apochromat ``(0, 0)``.
        """
        a, b = self.axial_chromatic_um
        lr = self.reference_wavelength_um
        lam = float(wavelength_um)
        return a * (lam - lr) / 0.1 + b * ((lam - 0.55) ** 2 - (lr - 0.55) ** 2) / 0.01

    @property
    def dof_um(self) -> float:
        """Depth of field (µm) by the standard formula.

        ``DoF = λ n / NA² + n e / (M NA)`` with λ the reference (green)
        wavelength, n the immersion index, e the camera pixel size and M the
        magnification: a wave-optical term plus a geometrical term for the
        smallest resolvable detector element.

        References
        ----------
        .. [1] Inoué S., Spring K. R., *Video Microscopy*, 2nd ed., Plenum
           (1997), ch. 2; as given in Nikon MicroscopyU, "Depth of Field and
           Depth of Focus".
        """
        n = self.immersion_index
        return self.reference_wavelength_um * n / self.na**2 + n * self.camera_pixel_size_um / (
            self.magnification * self.na
        )

    @property
    def max_adu(self) -> int:
        """Largest camera value, ``2**bit_depth - 1``."""
        return int(2**self.bit_depth - 1)

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of the fields."""
        d = asdict(self)
        d["wavelengths_um"] = list(self.wavelengths_um)
        d["axial_chromatic_um"] = list(self.axial_chromatic_um)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Optics:
        """Build from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"Unknown Optics field(s): {sorted(unknown)}")
        kw = dict(data)
        if "wavelengths_um" in kw:
            kw["wavelengths_um"] = tuple(kw["wavelengths_um"])
        if "axial_chromatic_um" in kw:
            kw["axial_chromatic_um"] = tuple(kw["axial_chromatic_um"])
        return cls(**kw)

    def replace(self, **changes: Any) -> Optics:
        """Return a copy with ``changes`` applied (validated)."""
        return replace(self, **changes)
