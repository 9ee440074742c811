"""KNN supercells seen down [001]pc, with polarization variants, domains and defects (ase Atoms).

Model of the Amm2 room-temperature structure in the pseudo-cubic cell (a ≈ 3.95–4.0 Å, orthorhombic
strain < 1 % neglected): A (K or Na) at the corner (0, 0, 0), Nb at the body centre, O on the face
centres. Polarization along a <110> variant p̂ moves Nb by ``nb_shift`` (0.1–0.2 Å) and the A cation by
``a_ratio · nb_shift`` along p̂, both relative to the rigid O6 cage, as in the Amm2 refinement where
cations shift one way and oxygen the other. Frames: x = column, y = row, z = beam, matching
conventions.md, so a variant's (x, y) components give its projected class directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..classes import CLASS_VARIANTS, NO_CLASS, class_of_variant

#: The 12 pseudo-cubic <110> polarization variants (x, y, z), z along the beam.
VARIANTS: list[tuple[int, int, int]] = [v for k in range(8) for v in CLASS_VARIANTS[k]]

#: Fractional positions in the pseudo-cubic cell (A at the origin, O6 cage centred on Nb).
A_SITE = (0.0, 0.0, 0.0)
B_SITE = (0.5, 0.5, 0.5)
O_SITES = ((0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5))

#: Thermal vibration amplitudes (Å, per direction) for frozen phonons; room-temperature perovskite
#: values (u_iso ≈ 0.005–0.01 Å²).
THERMAL_SIGMAS = {"K": 0.10, "Na": 0.10, "Nb": 0.07, "O": 0.09, "Sr": 0.08, "Ba": 0.08, "Ti": 0.07, "Si": 0.075}

#: Perovskites the builder makes: A-site species (first with probability ``k_fraction``), B-site species.
#: SrTiO3 and cubic (paraelectric) BaTiO3 are non-polar perovskites the models must not mistake for KNN.
PEROVSKITE_SPECIES = {"knn": (("K", "Na"), "Nb"), "srtio3": (("Sr", "Sr"), "Ti"), "batio3": (("Ba", "Ba"), "Ti")}

#: Fractional positions of the eight atoms of the diamond-cubic cell (silicon).
DIAMOND_SITES = ((0, 0, 0), (0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0), (0.25, 0.25, 0.25), (0.25, 0.75, 0.75),
                 (0.75, 0.25, 0.75), (0.75, 0.75, 0.25))


def variant_for_class(k: int, rng: np.random.Generator | None = None, z_sign: int = 1) -> tuple[int, int, int]:
    """A <110> variant that projects onto class ``k`` (out-of-plane ones: random or given sign along z)."""
    options = CLASS_VARIANTS[int(k)]
    if len(options) == 1:
        return options[0]
    if rng is not None:
        return options[int(rng.integers(len(options)))]
    return options[0] if z_sign > 0 else options[1]


@dataclass(frozen=True)
class CellSpec:
    """What sits in one pseudo-cubic cell: a variant (or None = non-polar) and missing O sites."""

    variant: tuple[int, int, int] | None
    nb_shift: float = 0.15
    o_vacancies: tuple[int, ...] = ()  # indices into O_SITES

    @property
    def label(self) -> int:
        return NO_CLASS if self.variant is None else class_of_variant(self.variant)


def knn_supercell(cells: list[list[CellSpec]] | np.ndarray, a: float, nz: int, rng: np.random.Generator,
                  k_fraction: float = 0.5, a_ratio: float = 0.5, vacancy_relax: float = 0.1,
                  material: str = "knn"):
    """An ase ``Atoms`` supercell of ``rows × cols`` cells laterally (``cells[row][col]``) and ``nz``
    cells along the beam. Each column of cells repeats its spec through the thickness; A sites are K
    with probability ``k_fraction``, drawn independently per site (random K/Na order).

    Next to an O vacancy, Nb moves ``vacancy_relax`` Å away from the missing O (reported to be
    within what 4D-STEM detects); vacancies sit in every other cell along the beam. ``material``
    names the species (``PEROVSKITE_SPECIES``): another perovskite on the same sites.
    """
    from ase import Atoms

    (a_first, a_second), b_species = PEROVSKITE_SPECIES[material]
    cells = np.asarray(cells, dtype=object)
    rows, cols = cells.shape
    symbols: list[str] = []
    positions: list[np.ndarray] = []
    for r in range(rows):
        for c in range(cols):
            spec: CellSpec = cells[r, c]
            p = np.zeros(3) if spec.variant is None else np.asarray(spec.variant, float) / np.sqrt(2.0)
            d_nb = spec.nb_shift * p
            d_a = a_ratio * spec.nb_shift * p
            origin = np.array([c, r, 0.0])
            for z in range(nz):
                o = (origin + [0, 0, z]) * a
                kind = a_first if rng.random() < k_fraction else a_second
                symbols.append(kind)
                positions.append(o + np.asarray(A_SITE) * a + d_a)
                d = d_nb.copy()
                vac_here = spec.o_vacancies if z % 2 == 0 else ()
                for i in vac_here:  # Nb relaxes away from the vacancy
                    away = np.asarray(B_SITE) - np.asarray(O_SITES[i])
                    d += vacancy_relax * away / np.linalg.norm(away)
                symbols.append(b_species)
                positions.append(o + np.asarray(B_SITE) * a + d)
                for i, site in enumerate(O_SITES):
                    if i in vac_here:
                        continue
                    symbols.append("O")
                    positions.append(o + np.asarray(site) * a)
    atoms = Atoms(symbols=symbols, positions=np.array(positions), cell=[cols * a, rows * a, nz * a], pbc=True)
    atoms.wrap()
    return atoms


def silicon_supercell(n: int, a: float, nz: int):
    """Diamond-cubic silicon seen down [001]: ``n`` x ``n`` cells laterally, ``nz`` cells thick."""
    from ase import Atoms

    grid = np.stack(np.meshgrid(np.arange(n), np.arange(n), np.arange(nz), indexing="xy"), -1).reshape(-1, 1, 3)
    positions = ((grid + np.asarray(DIAMOND_SITES)[None]) * a).reshape(-1, 3)
    atoms = Atoms(symbols=["Si"] * len(positions), positions=positions, cell=[n * a, n * a, nz * a], pbc=True)
    atoms.wrap()
    return atoms


def uniform_cells(variant, rows: int, cols: int, nb_shift: float) -> list[list[CellSpec]]:
    """A single-domain block of cells."""
    return [[CellSpec(tuple(variant) if variant is not None else None, nb_shift) for _ in range(cols)]
            for _ in range(rows)]


def domain_cells(rows: int, cols: int, domains: list[dict], nb_shift: float,
                 defects: list[dict] = ()) -> tuple[list[list[CellSpec]], np.ndarray, np.ndarray]:
    """Cells of a multi-domain structure, plus per-cell labels (int8, -1 non-polar) and a defect mask.

    ``domains``: list of ``{"class": k, "rows": [r0, r1], "cols": [c0, c1]}`` (half-open, later entries
    win); walls are abrupt, one cell to the next. ``defects``: ``{"kind": "nonpolar" | "o_vacancy",
    "rows": [r0, r1], "cols": [c0, c1]}``.
    """
    grid = [[CellSpec(None, nb_shift) for _ in range(cols)] for _ in range(rows)]
    defect = np.zeros((rows, cols), bool)
    for dom in domains:
        v = tuple(dom["variant"]) if "variant" in dom else variant_for_class(int(dom["class"]))
        for r in range(*dom["rows"]):
            for c in range(*dom["cols"]):
                grid[r][c] = CellSpec(v, nb_shift)
    for d in defects:
        kind = d["kind"]
        for r in range(*d["rows"]):
            for c in range(*d["cols"]):
                old = grid[r][c]
                if kind == "nonpolar":
                    grid[r][c] = CellSpec(None, nb_shift)
                elif kind == "o_vacancy":
                    grid[r][c] = CellSpec(old.variant, old.nb_shift, o_vacancies=(1,))  # in the Nb plane: Nb relaxes in projection
                defect[r, c] = True
    labels = np.array([[grid[r][c].label for c in range(cols)] for r in range(rows)], dtype=np.int8)
    return grid, labels, defect
