"""Virtual imaging throughput against plain numpy, plain dask and HyperSpy, all in one process.

    .venv/bin/python benchmarks/virtual.py [--gb 2] [--formats npy h5 zarr] [--kinds adf bf com multi]
    .venv/bin/python benchmarks/virtual.py --scaling 1 4 16      # time and peak memory against file size

``--scaling`` writes a ``.npy`` of each size (ADF detector), times ``polarstem virtual`` in a fresh
process (median of ``--rounds``, after a warm-up run; its peak resident memory, imports included)
and, in this process, :func:`polarstem.virtual.virtual_image_list` against ``dask einsum`` with
the largest rise of resident memory during each; ``ratio`` is the median of the per-round ratios.

Writes a (rows, 128, 256, 256) uint16 scan of Poisson patterns (a bright-field disk that moves a
little from pattern to pattern, on a background) of the given size in each format:

- ``npy``: a plain ``.npy`` file (polarstem maps it; numpy and dask read it through a memory map);
- ``h5``: a HyperSpy ``.hspy`` file, HDF5 chunked by scan row, uncompressed;
- ``zarr``: a ``.zarr`` array chunked by scan row, uncompressed;
- ``hspy``, ``zspy``: the same as HyperSpy writes them by default (gzip HDF5, blosc-zstd zarr), where
  decompression, not the detector sum, sets the pace; ``decode only`` is then the file's ceiling.

Then, per format and detector kind, it times in interleaved rounds (the median of ``--rounds``,
after one warm-up round that also fills the page cache and compiles the loops):

- ``polarstem``: :func:`polarstem.virtual.virtual_image_list` on the file as ``polarstem.io.load`` opens it;
- ``numpy chunked matmul``: one thread, each scan row (a memory map, h5py or zarr slice) converted to
  float32 and multiplied by the planes;
- ``dask tensordot`` / ``dask einsum`` / ``dask (a*m).sum``: plain dask on the file's own chunks,
  threaded scheduler on every core (BLAS limited to one thread per worker, which helps dask); for
  ``.npy`` the dask array of ``polarstem.io.load`` (plain reads), and ``dask einsum (np.load memory
  map)`` the one most users write;
- ``hyperspy (s*m).sum``: a lazy HyperSpy signal of the file (``hs.load(..., lazy=True)``; for ``.npy``
  and ``.zarr`` of the dask array above), times the mask, summed over the signal axes (single-plane
  kinds only);
- ``decode only``: every chunk read and decompressed, nothing computed (compressed formats).

Kinds: ``adf`` (annulus from 1.1 disk radii to the edge: most of the detector), ``bf`` (the disk),
``com`` (whole-pattern centre of mass: three planes), ``multi`` (BF + ADF + CoM in one pass).
Every method's images are checked against polarstem's; ``ratio`` is the method's speed over the
fastest dask expression in the same round (median over rounds); ``cores`` is the process's CPU time
over the wall time (2 = both cores computing the whole time). ``peak +RSS`` is the largest rise
of this process's resident memory during the method (sampled every 10 ms; pages of a memory map
count). ``--cli`` also times ``polarstem virtual`` end to end in a fresh process (imports,
geometry, compiled-loop loading) and reports that process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

DET = 256
COLS = 128


# --------------------------------------------------------------------------------------------------
# data


def scan_rows_for(gb: float) -> int:
    return max(2, int(round(gb * 1e9 / (COLS * DET * DET * 2))))


def frame_bank(n: int = 48, seed: int = 0) -> np.ndarray:
    """Poisson patterns: a BF disk (radius 40 px) shifted by up to 2 px, on a background of 3 counts."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((DET, DET))
    bank = np.empty((n, DET, DET), np.uint16)
    for i in range(n):
        dy, dx = rng.uniform(-2, 2, 2)
        lam = 3.0 + 200.0 * (np.hypot(yy - DET / 2 - dy, xx - DET / 2 - dx) < 40)
        bank[i] = rng.poisson(lam)
    return bank


def scan_row(bank: np.ndarray, r: int) -> np.ndarray:
    idx = (np.arange(COLS) * 7 + r * 13) % len(bank)
    return bank[idx]


def write_npy(path: Path, rows: int, bank: np.ndarray) -> None:
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(rows, COLS, DET, DET))
    for r in range(rows):
        mm[r] = scan_row(bank, r)
    mm.flush()
    del mm
    path.with_suffix(".json").write_text(json.dumps({"scan_step_nm": 0.1, "convergence_mrad": 20.0}))


def write_format(fmt: str, path: Path, npy: Path) -> None:
    """The scan of ``npy`` in format ``fmt``, chunked by scan row (16 MiB chunks)."""
    src = np.load(npy, mmap_mode="r")
    chunks = (1, COLS, DET, DET)
    if fmt in ("h5", "hspy", "zspy"):
        import dask.array as da
        import hyperspy.api as hs

        s = hs.signals.Signal2D(da.from_array(src, chunks=chunks)).as_lazy()
        for ax in s.axes_manager.navigation_axes:
            ax.scale, ax.units = 0.1, "nm"
        s.metadata.set_item("Acquisition_instrument.TEM.convergence_angle", 20.0)
        kwargs = {"compression": None} if fmt == "h5" else {}
        s.save(str(path), chunks=chunks, overwrite=True, show_progressbar=False, **kwargs)
    elif fmt == "zarr":
        import zarr

        z = zarr.open(str(path), mode="w", shape=src.shape, chunks=chunks, dtype=src.dtype, compressor=None)
        for r in range(src.shape[0]):
            z[r] = src[r]
        Path(str(path)[: -len(".zarr")] + ".json").write_text(npy.with_suffix(".json").read_text())
    else:
        raise ValueError(fmt)


def file_path(tmp: Path, fmt: str) -> Path:
    return tmp / {"npy": "scan.npy", "h5": "scan_raw.hspy", "zarr": "scan.zarr", "hspy": "scan.hspy",
                  "zspy": "scan.zspy"}[fmt]


def storage_array(path: Path, fmt: str):
    """The file's array as numpy, dask and HyperSpy users open it: a memory map, an h5py or zarr array."""
    if fmt == "npy":
        return np.load(path, mmap_mode="r")
    if fmt in ("h5", "hspy"):
        import h5py

        f = h5py.File(path, "r")
        found = []
        f.visititems(lambda n, o: found.append(o) if isinstance(o, h5py.Dataset) and o.ndim == 4 else None)
        return found[0]
    import zarr

    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return node
    found = []

    def walk(g):
        for _, a in g.arrays():
            if a.ndim == 4:
                found.append(a)
        for _, sub in g.groups():
            walk(sub)

    walk(node)
    return found[0]


# --------------------------------------------------------------------------------------------------
# measuring


class PeakRSS:
    """Largest resident memory of this process while the block runs (sampled every 10 ms), in MiB."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.added = (self.peak - self.base) / 2**20


def release_memory() -> None:
    """Give freed heap memory back to the system, so each method's peak starts from the same floor."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def detectors_for(kind: str):
    from polarstem.virtual import VirtualDetector

    return {
        "adf": [VirtualDetector("adf")],
        "bf": [VirtualDetector("bf")],
        "com": [VirtualDetector("com")],
        "multi": [VirtualDetector("bf"), VirtualDetector("adf"), VirtualDetector("com")],
    }[kind]


def planes_for(dets, shape, geometry) -> np.ndarray:
    """The weight planes the anchors multiply by: one per BF/ADF, (1, y, x) per CoM."""
    from polarstem.virtual import detector_mask

    yy, xx = np.indices(shape, dtype=np.float64)
    planes = []
    for d in dets:
        w = detector_mask(d, shape, geometry).astype(np.float64)
        if d.kind == "com":
            planes += [w, w * (yy - geometry.center[0]), w * (xx - geometry.center[1])]
        else:
            planes.append(w)
    return np.stack(planes).astype(np.float32)


def images_from_sums(dets, sums: np.ndarray, geometry) -> list[np.ndarray]:
    """Turn (k, rows, cols) plane sums into the images polarstem returns (CoM divided and scaled)."""
    out, i = [], 0
    scale = geometry.mrad_per_px or 1.0
    for d in dets:
        if d.kind == "com":
            with np.errstate(invalid="ignore", divide="ignore"):
                out.append(sums[i + 1: i + 3] / sums[i] * scale)
            i += 3
        else:
            out.append(sums[i])
            i += 1
    return out


def methods_for(fmt: str, path: Path, dets, geometry, shape):
    """name -> function returning the images (or None for decode-only)."""
    import dask.array as da
    from threadpoolctl import threadpool_limits

    from polarstem.chunks import available_cores
    from polarstem.io import load
    from polarstem.virtual import virtual_image_list

    planes = planes_for(dets, shape[2:], geometry)
    flat = planes.reshape(len(planes), -1)
    raw = storage_array(path, fmt)
    ncores = available_cores()

    dataset = load(path)  # opened once, as the anchors' arrays are

    def ours():
        return virtual_image_list(dataset, dets, geometry=geometry)

    def numpy_matmul():
        sums = np.empty((len(planes),) + shape[:2])
        with threadpool_limits(1):
            for r in range(shape[0]):
                block = np.asarray(raw[r : r + 1]).reshape(-1, flat.shape[1]).astype(np.float32)
                sums[:, r] = (block @ flat.T).T
        return images_from_sums(dets, sums, geometry)

    def dask_array(memory_map: bool = False):
        if fmt == "npy":  # as polarstem.io.load opens it (plain reads), or through np.load's memory map
            return da.from_array(raw, chunks=(1, COLS, DET, DET)) if memory_map else load(path).data
        if fmt in ("zarr", "zspy"):
            return da.from_zarr(raw)
        return da.from_array(raw, chunks=raw.chunks)

    def dask_expr(expr, array=None):
        def run():
            a = dask_array() if array is None else array()
            if expr == "tensordot":
                lazy = da.moveaxis(da.tensordot(a, planes, axes=((2, 3), (1, 2))), -1, 0)
            elif expr == "einsum":
                lazy = da.einsum("ijkl,pkl->pij", a, planes)
            else:
                lazy = (a * planes[0]).sum(axis=(2, 3))[None]
            with threadpool_limits(1):
                sums = np.asarray(lazy.compute(scheduler="threads", num_workers=ncores), dtype=np.float64)
            return images_from_sums(dets, sums, geometry)
        return run

    def hyperspy():
        import hyperspy.api as hs

        if fmt in ("h5", "hspy", "zspy"):
            s = hs.load(str(path), lazy=True)
        else:
            s = hs.signals.Signal2D(dask_array()).as_lazy()
        masked = s * planes[0]
        img = masked.sum(axis=masked.axes_manager.signal_axes)
        img.compute(show_progressbar=False)
        return images_from_sums(dets, np.asarray(img.data, dtype=np.float64)[None], geometry)

    def decode_only():
        touched = dask_array().map_blocks(lambda b: np.zeros((1, 1, 1, 1), np.int64), dtype=np.int64,
                                          chunks=(1, 1, 1, 1))
        touched.compute(scheduler="threads", num_workers=ncores)
        return None

    methods = {"polarstem": ours, "numpy chunked matmul (1 thread)": numpy_matmul,
               "dask tensordot": dask_expr("tensordot"), "dask einsum": dask_expr("einsum")}
    if fmt == "npy":  # what most users write for a .npy: slower here (page faults), +2 GB anonymous memory
        methods["dask einsum (np.load memory map)"] = dask_expr("einsum", lambda: dask_array(memory_map=True))
    if len(planes) == 1:
        methods["dask (a*m).sum"] = dask_expr("mul")
        methods["hyperspy (s*m).sum"] = hyperspy
    if fmt in ("hspy", "zspy"):
        methods["decode only (dask)"] = decode_only
    return methods


def compare(images, reference) -> float:
    """Largest relative difference over all images (NaN-aware)."""
    worst = 0.0
    for a, b in zip(images, reference):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = np.nanmax(np.abs(b)) or 1.0
        worst = max(worst, float(np.nanmax(np.abs(a - b)) / scale))
    return worst


def bench(fmt: str, path: Path, kinds: list[str], rounds: int) -> list[dict]:
    from polarstem.io import load
    from polarstem.virtual import detector_geometry

    ds = load(path)
    shape = ds.shape
    nbytes = int(np.prod(shape)) * ds.dtype.itemsize
    geometry = detector_geometry(ds)
    rows = []
    for kind in kinds:
        dets = detectors_for(kind)
        methods = methods_for(fmt, path, dets, geometry, shape)
        times = {m: [] for m in methods}
        busy = {m: [] for m in methods}
        rss = {m: 0.0 for m in methods}
        ratios = {m: [] for m in methods}
        reference = None
        errors = {}
        for rnd in range(rounds + 1):  # round 0 warms the page cache and compiles
            this = {}
            for name, fn in methods.items():
                release_memory()
                with PeakRSS() as mem:
                    t0, c0 = time.perf_counter(), time.process_time()
                    images = fn()
                    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
                if name == "polarstem" and reference is None:
                    reference = images
                if images is not None and reference is not None and name not in errors:
                    errors[name] = compare(images, reference)
                if rnd:
                    times[name].append(dt)
                    busy[name].append(cpu / dt)
                    rss[name] = max(rss[name], mem.added)
                    this[name] = dt
            if rnd:
                best_dask = min(t for m, t in this.items() if m.startswith("dask"))
                for m, t in this.items():
                    ratios[m].append(best_dask / t)
        for m in methods:
            med = statistics.median(times[m])
            rows.append({"format": fmt, "kind": kind, "method": m, "shape": list(shape), "gb": nbytes / 1e9,
                         "seconds": med, "gb_per_s": nbytes / 1e9 / med,
                         "ratio_to_best_dask": statistics.median(ratios[m]),
                         "cores_busy": statistics.median(busy[m]),
                         "peak_added_rss_mib": rss[m], "max_rel_diff": errors.get(m, float("nan")),
                         "rounds": rounds})
        print_rows([r for r in rows if r["kind"] == kind])
    return rows


def print_rows(rows: list[dict]) -> None:
    r0 = rows[0]
    print(f"\n{r0['format']} {r0['kind']}: {tuple(r0['shape'])} uint16, {r0['gb']:.2f} GB, "
          f"median of {r0['rounds']} rounds")
    print(f"  {'method':34s} {'time':>8s} {'GB/s':>7s} {'ratio':>7s} {'cores':>6s} {'peak +RSS':>10s} "
          f"{'max rel diff':>13s}")
    for r in rows:
        print(f"  {r['method']:34s} {r['seconds']:7.2f}s {r['gb_per_s']:7.2f} {r['ratio_to_best_dask']:6.2f}x "
              f"{r['cores_busy']:6.2f} {r['peak_added_rss_mib']:7.0f} MiB {r['max_rel_diff']:13.1e}", flush=True)


def run_cli(path: Path, kind: str, out: Path) -> tuple[float, float]:
    """Wall time and peak resident memory (MiB) of ``polarstem virtual`` in a fresh process."""
    # VmHWM, not ru_maxrss: the latter also counts the parent's pages the forked child shared before exec
    code = ("import sys; from polarstem.cli import main; rc = main(sys.argv[1:]); "
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
            "print('MAXRSS', hwm, file=sys.stderr); sys.exit(rc)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, "virtual", str(path), "--kind", kind, "-o", str(out)],
                          capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    peak = [line for line in proc.stderr.splitlines() if line.startswith("MAXRSS")][-1].split()[1]
    return dt, int(peak) / 1024


def scaling(sizes: list[float], tmp: Path, rounds: int) -> None:
    """Time and peak memory of polarstem (fresh process and in this one) and dask einsum against file size."""
    import dask.array as da
    from threadpoolctl import threadpool_limits

    from polarstem.chunks import available_cores
    from polarstem.io import load
    from polarstem.virtual import VirtualDetector, detector_geometry, virtual_image_list

    bank = frame_bank()
    print(f"{'file':>8s} {'shape':>22s} {'cli time':>9s} {'cli GB/s':>9s} {'cli peak RSS':>13s} "
          f"{'in-process':>11s} {'+RSS':>8s} {'cores':>6s} {'dask einsum':>12s} {'+RSS':>8s} {'ratio':>6s}")
    for gb in sizes:
        npy = tmp / f"scan_{gb:g}gb.npy"
        write_npy(npy, scan_rows_for(gb), bank)
        nbytes = npy.stat().st_size
        run_cli(npy, "adf", tmp / "adf.tif")  # warm: page cache and compiled loops
        cli = [run_cli(npy, "adf", tmp / "adf.tif") for _ in range(rounds)]
        ds = load(npy)
        geometry = detector_geometry(ds)
        mask = planes_for([VirtualDetector("adf")], ds.detector_shape, geometry)[0]
        ours, busy, ours_rss, dask_t, dask_rss, ratios = [], [], 0.0, [], 0.0, []
        for _ in range(rounds):
            release_memory()
            with PeakRSS() as mem:
                t0, c0 = time.perf_counter(), time.process_time()
                virtual_image_list(ds, [VirtualDetector("adf")], geometry=geometry)
                ours.append(time.perf_counter() - t0)
                busy.append((time.process_time() - c0) / ours[-1])
            ours_rss = max(ours_rss, mem.added)
            a = load(npy).data  # plain reads: through np.load's memory map dask would hold the file in memory
            release_memory()
            with PeakRSS() as mem, threadpool_limits(1):
                t0 = time.perf_counter()
                da.einsum("ijkl,kl->ij", a, mask).compute(scheduler="threads", num_workers=available_cores())
                dask_t.append(time.perf_counter() - t0)
            dask_rss = max(dask_rss, mem.added)
            ratios.append(dask_t[-1] / ours[-1])
        t_cli = statistics.median(t for t, _ in cli)
        peak = max(p for _, p in cli)
        t_ours, t_dask = statistics.median(ours), statistics.median(dask_t)
        print(f"{nbytes / 1e9:7.2f}G {str(ds.shape):>22s} {t_cli:8.1f}s {nbytes / 1e9 / t_cli:9.2f} {peak:9.0f} MiB "
              f"{nbytes / 1e9 / t_ours:8.2f}/s {ours_rss:5.0f} MiB {statistics.median(busy):6.2f} "
              f"{nbytes / 1e9 / t_dask:9.2f}/s {dask_rss:5.0f} MiB {statistics.median(ratios):5.2f}x", flush=True)
        npy.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=2.0, help="file size in GB (1e9 bytes)")
    ap.add_argument("--formats", nargs="+", default=["npy", "h5", "zarr"],
                    choices=["npy", "h5", "zarr", "hspy", "zspy"])
    ap.add_argument("--kinds", nargs="+", default=["adf", "bf", "com", "multi"], choices=["adf", "bf", "com", "multi"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", help="where to write the files (default: a temporary folder)")
    ap.add_argument("--cli", action="store_true", help="also time `polarstem virtual` in a fresh process")
    ap.add_argument("--scaling", nargs="+", type=float, metavar="GB", help="file sizes for the scaling table")
    ap.add_argument("--json", help="write the rows to this JSON file")
    args = ap.parse_args()
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="polarstem-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; files in {tmp}")
    try:
        if args.scaling:
            scaling(args.scaling, tmp, args.rounds)
            return
        npy = file_path(tmp, "npy")
        rows = scan_rows_for(args.gb)
        if not npy.exists() or np.load(npy, mmap_mode="r").shape[0] != rows:
            write_npy(npy, rows, frame_bank())
        all_rows = []
        for fmt in args.formats:
            path = file_path(tmp, fmt)
            if fmt != "npy" and not path.exists():
                t0 = time.perf_counter()
                write_format(fmt, path, npy)
                print(f"wrote {path.name} in {time.perf_counter() - t0:.0f} s")
            all_rows += bench(fmt, path, args.kinds, args.rounds)
            if args.cli:
                for kind in args.kinds:
                    if kind != "multi":
                        dt, peak = run_cli(path, kind, tmp / "out.tif")
                        print(f"  polarstem virtual --kind {kind} (fresh process): {dt:.1f} s, "
                              f"{all_rows[-1]['gb'] / dt:.2f} GB/s, peak RSS {peak:.0f} MiB")
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
        if args.json:
            Path(args.json).write_text(json.dumps(all_rows, indent=1))
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
