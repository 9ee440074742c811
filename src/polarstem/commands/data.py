"""``polarstem info`` and ``polarstem virtual``: look at a 4D-STEM file without loading it."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _navigation_shape(args):
    return tuple(args.navigation_shape) if args.navigation_shape else None


def add_navigation_shape(parser) -> None:
    parser.add_argument("--navigation-shape", nargs=2, type=int, metavar=("ROWS", "COLS"),
                        help="scan shape for files whose header does not give it (Merlin .mib)")


def add_calibration_options(parser) -> None:
    """``--beam-energy``, ``--convergence``, ``--mrad-per-px``, ``--scan-step``: override the file."""
    group = parser.add_argument_group("calibration (overrides what the file says; recorded in the provenance)")
    group.add_argument("--beam-energy", type=float, metavar="KEV", help="beam energy in keV")
    group.add_argument("--convergence", type=float, metavar="MRAD", help="convergence semi-angle in mrad")
    group.add_argument("--mrad-per-px", type=float, metavar="X", help="detector sampling in mrad per pixel")
    group.add_argument("--scan-step", type=float, metavar="NM", help="scan step in nm (rows and columns)")


def calibration_given(args) -> dict[str, float]:
    """The calibration values given on the command line, keyed as :data:`polarstem.io.CALIBRATION_ENTRIES`."""
    given = {"beam_energy_kev": args.beam_energy, "convergence_mrad": args.convergence,
             "mrad_per_px": args.mrad_per_px, "scan_step_nm": args.scan_step}
    return {k: v for k, v in given.items() if v is not None}


def register(sub) -> None:
    p = sub.add_parser("info", help="shape, dtype, calibrations and chunking of a 4D-STEM file")
    p.add_argument("file")
    add_navigation_shape(p)
    add_calibration_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=info)

    p = sub.add_parser("virtual", help="virtual bright-field, annular dark-field or centre-of-mass image",
                       description="A virtual image. --kind com-vector writes the centre-of-mass (DPC) vector "
                                   "map as RGB (hue = direction, brightness = magnitude, descan plane removed): "
                                   "OUT per position, OUT_cell averaged over each unit cell when the scan "
                                   "resolves the lattice, and OUT_vectors.tif with the components.")
    p.add_argument("file")
    add_navigation_shape(p)
    add_calibration_options(p)
    p.add_argument("--kind", choices=["bf", "adf", "com", "com-vector"], default="bf")
    p.add_argument("--inner", type=float, help="inner angle (ADF; CoM over an annulus)")
    p.add_argument("--outer", type=float, help="outer angle (BF radius, ADF outer; CoM over a disk or annulus)")
    p.add_argument("--units", choices=["mrad", "px"], default="mrad", help="units of --inner/--outer")
    p.add_argument("-o", "--output", required=True, help="output .tif (or .npy; .png for com-vector)")
    p.set_defaults(func=virtual)


def info(args) -> int:
    from ..io import load

    ds = load(args.file, navigation_shape=_navigation_shape(args), calibration=calibration_given(args))
    d = ds.info()
    d["bright_field_disk"] = _ruler_report(ds)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    given = d["calibration_given"]

    def fmt(v, unit=""):
        return "unknown" if v is None else f"{v:g}{unit}"

    def note(key, unit):
        """For a value given on the command line: what the file says."""
        if key not in given:
            return ""
        was = given[key]["file"]
        return f"  (given; the file says {'nothing' if was is None else fmt(was, unit)})"

    sy, sx, ky, kx = d["shape"]
    print(f"file:          {d['file']}")
    print(f"shape:         {sy} x {sx} scan, {ky} x {kx} detector  (scan_rows, scan_cols, det_rows, det_cols)")
    print(f"dtype:         {d['dtype']}  ({d['nbytes'] / 2**20:.1f} MiB)")
    step = d["scan_step_nm_rows_cols"]
    print(f"scan step:     {fmt(step[0], ' nm')} (rows), {fmt(step[1], ' nm')} (cols)"
          + note("scan_step_nm", " nm"))
    print(f"detector:      {fmt(d['mrad_per_px'], ' mrad/px')}  (axis scale {d['detector_scale'][1]:g} "
          f"{d['detector_units'] or 'px'})" + note("mrad_per_px", " mrad/px"))
    print(f"beam energy:   {fmt(d['beam_energy_kev'], ' keV')}" + note("beam_energy_kev", " keV"))
    print(f"convergence:   {fmt(d['convergence_mrad'], ' mrad')}" + note("convergence_mrad", " mrad"))
    print(f"chunks:        {tuple(d['chunk_shape'])}")
    disk = d["bright_field_disk"]
    if disk["radius_px"] is not None:
        mrad = f" = {disk['radius_mrad']:.3g} mrad" if disk["radius_mrad"] else ""
        print(f"bright field:  disk radius {disk['radius_px']:.1f} px{mrad} (measured on {disk['frames']} patterns)")
    else:
        print(f"bright field:  no disk found in {disk['frames']} patterns (not a convergent-beam pattern?)")
    for note in disk["notes"]:
        print(f"note: {note}")
    return 0


def _ruler_report(ds) -> dict:
    """What the bright-field disk of a few hundred patterns says about the calibration (polarstem.ruler)."""
    from ..ruler import complete_calibration, measure_ruler, sample_frames

    frames = sample_frames(ds)
    ruler = measure_ruler(frames)
    trusted = ruler is not None and ruler.trusted
    _, notes = complete_calibration(ds.calibration, ruler)
    radius = ruler.disk_radius_px if trusted else None
    mrad = radius * ds.calibration.mrad_per_px if radius and ds.calibration.mrad_per_px else None
    return {"radius_px": radius, "radius_mrad": mrad, "frames": int(len(frames)), "notes": notes}


def virtual(args) -> int:
    from ..errors import PolarstemError
    from ..export import write_map
    from ..io import load
    from ..virtual import VirtualDetector, annulus_edge_warning, detector_geometry, virtual_image

    out = Path(args.output)
    allowed = (".tif", ".tiff", ".npy", ".png") if args.kind == "com-vector" else (".tif", ".tiff", ".npy")
    if out.suffix.lower() not in allowed:
        raise PolarstemError(f"{args.output}: output must end in {', '.join(allowed)}")
    ds = load(args.file, navigation_shape=_navigation_shape(args), calibration=calibration_given(args))
    kind = "com" if args.kind == "com-vector" else args.kind
    det = VirtualDetector(kind, inner=args.inner, outer=args.outer, units=args.units)
    progress = _tqdm_progress(f"virtual {args.kind}")
    provenance = {"source": str(Path(ds.source).resolve()), "detector": det.__dict__,
                  "calibration": ds.calibration.to_dict(), "calibration_given": ds.calibration_given}
    if args.kind == "com-vector":
        return _com_vector(ds, det, out, progress, provenance)
    geometry = detector_geometry(ds)
    warning = annulus_edge_warning(det, geometry, ds.detector_shape)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    image = virtual_image(ds, det, geometry=geometry, progress=progress)
    write_map(out, image.astype("float32"), ds.calibration, provenance=provenance)
    print(f"wrote {out}  shape {image.shape}", file=sys.stderr)
    return 0


def _com_vector(ds, det, out: Path, progress, provenance: dict) -> int:
    """``virtual --kind com-vector``: RGB maps per position and per cell, and the vector components."""
    import numpy as np

    from ..com_vectors import com_vector_map
    from ..export import write_map

    vm = com_vector_map(ds, det, progress=progress)
    provenance = dict(provenance, com_vector={
        "units": vm.units, "components": ["y (rows)", "x (cols)", "cell y", "cell x"],
        "descan_plane": {"y": vm.descan[0].tolist(), "x": vm.descan[1].tolist(), "terms": ["1", "row", "col"]},
        "lattice": None if vm.lattice is None else {"period_px": list(vm.lattice.period), "source": vm.lattice.source},
        "colour": "hue = direction (as the class colours: 45 deg * k from +x towards +y is class k), "
                  "brightness = magnitude / its 99th percentile"})
    written = [out]
    _write_rgb(out, vm.rgb(), ds.calibration, provenance)
    if vm.cell_vectors is not None:
        cell_out = out.with_name(f"{out.stem}_cell{out.suffix}")
        _write_rgb(cell_out, vm.rgb(cell=True), ds.calibration, provenance)
        written.append(cell_out)
    cell = vm.cell_vectors if vm.cell_vectors is not None else np.full_like(vm.vectors, np.nan)
    vec_out = out.with_name(f"{out.stem}_vectors{'.npy' if out.suffix.lower() == '.npy' else '.tif'}")
    write_map(vec_out, np.concatenate([vm.vectors, cell]).astype("float32"), ds.calibration, provenance=provenance)
    written.append(vec_out)
    note = "" if vm.cell_vectors is not None else " (no resolved lattice: no cell average)"
    print(f"wrote {', '.join(str(p) for p in written)}{note}", file=sys.stderr)
    return 0


def _write_rgb(path: Path, rgb, calibration, provenance: dict) -> None:
    """An RGB map: TIFF (with calibration) or .npy as data, one pixel per position; PNG for viewing,
    enlarged to at least 512 px with the colour wheel beside it."""
    import numpy as np

    from ..com_vectors import colour_wheel
    from ..export import atomic_path, write_map

    def to8(a):
        return np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)

    if path.suffix.lower() != ".png":
        write_map(path, to8(rgb), calibration, provenance=provenance)
        return
    from PIL import Image

    zoom = max(1, int(np.ceil(512 / max(rgb.shape[:2]))))
    big = np.repeat(np.repeat(to8(rgb), zoom, axis=0), zoom, axis=1)
    side = max(32, big.shape[0] // 4)
    canvas = np.zeros((big.shape[0], big.shape[1] + side + 16, 3), np.uint8)
    canvas[:, : big.shape[1]] = big
    canvas[:side, big.shape[1] + 8: big.shape[1] + 8 + side] = to8(colour_wheel(side))
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")


def _tqdm_progress(desc: str, unit: str = "chunk"):
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr (with rate and time left)."""
    from tqdm import tqdm

    state = {}

    def progress(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is not None and bar.total != total:  # a new stage (a lattice pass, then the positions)
            bar.close()
            bar = None
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                                      mininterval=0.5)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return progress
