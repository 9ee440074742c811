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

    p = sub.add_parser("virtual", help="virtual bright-field, annular dark-field or centre-of-mass image")
    p.add_argument("file")
    add_navigation_shape(p)
    add_calibration_options(p)
    p.add_argument("--kind", choices=["bf", "adf", "com"], default="bf")
    p.add_argument("--inner", type=float, help="inner angle (ADF)")
    p.add_argument("--outer", type=float, help="outer angle (BF radius or ADF outer)")
    p.add_argument("--units", choices=["mrad", "px"], default="mrad", help="units of --inner/--outer")
    p.add_argument("-o", "--output", required=True, help="output .tif (or .npy)")
    p.set_defaults(func=virtual)


def info(args) -> int:
    from ..io import load

    ds = load(args.file, navigation_shape=_navigation_shape(args), calibration=calibration_given(args))
    d = ds.info()
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
    return 0


def virtual(args) -> int:
    from ..errors import PolarstemError
    from ..export import write_map
    from ..io import load
    from ..virtual import VirtualDetector, virtual_image

    ds = load(args.file, navigation_shape=_navigation_shape(args), calibration=calibration_given(args))
    det = VirtualDetector(args.kind, inner=args.inner, outer=args.outer, units=args.units)
    progress = _tqdm_progress(f"virtual {args.kind}")
    image = virtual_image(ds, det, progress=progress)
    if not args.output.lower().endswith((".tif", ".tiff", ".npy")):
        raise PolarstemError(f"{args.output}: output must end in .tif, .tiff or .npy")
    write_map(args.output, image.astype("float32"), ds.calibration,
              provenance={"source": str(Path(ds.source).resolve()), "detector": det.__dict__,
                          "calibration": ds.calibration.to_dict(), "calibration_given": ds.calibration_given})
    print(f"wrote {args.output}  shape {image.shape}", file=sys.stderr)
    return 0


def _tqdm_progress(desc: str):
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr."""
    from tqdm import tqdm

    state = {}

    def progress(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc=desc, unit="chunk", file=sys.stderr, leave=False)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return progress
