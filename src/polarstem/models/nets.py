"""Network architectures of the study (ResNet-18/50, VGG-11/16, a compact CNN) for 1-channel patterns.

Every network is an ``nn.Module`` with ``embed(x) -> (N, D)`` (the representation the prototype regime
and the anomaly score use) and ``forward(x) -> (N, 8)`` logits. Build them by name with
:func:`create_model`; weights are state dicts stored as safetensors (see ``registry``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..classes import N_CLASSES


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with a projected shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Classifier(nn.Module):
    """Backbone -> average pool to ``pool`` x ``pool`` -> embedding (D) -> linear head (8 classes).

    ``pool`` = 1 is global pooling. A diffraction pattern is not translation invariant (where the
    intensity sits relative to the disk centre is the signal), so the shipped models keep a coarse
    2x2 or 3x3 layout of the last feature map.
    """

    embed_dim: int
    pool: int = 1
    friedel: bool = False

    def _make_aux(self, aux_dim: int) -> None:
        """Optional auxiliary head on the embedding: regresses the probe position in the cell and the
        thickness during training (``training.loop.AUX_TARGETS``), so the embedding separates the two nuisances
        that change a pattern most from the polarization. Not used at inference."""
        self.aux = nn.Linear(self.embed_dim, aux_dim) if aux_dim else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.friedel:  # second channel: the Friedel-antisymmetric part, where the sign of P lives
            x = torch.cat([x, x - torch.flip(x, dims=(-2, -1))], dim=1)
        h = self.backbone(x)
        h = torch.flatten(F.adaptive_avg_pool2d(h, self.pool), 1)
        return self.neck(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class ResNet18(Classifier):
    """ResNet-18 topology ([2, 2, 2, 2] basic blocks), 1-channel input, base width ``width``.

    Width 32 keeps the weights at ~11 MB. The stem (5x5 stride-2 conv, 2x2 max-pool) brings a 64 px
    pattern to 16x16 maps, as the original stem does for 64 px inputs; CPU training stays affordable.
    """

    def __init__(self, width: int = 32, embed_dim: int = 128, n_classes: int = N_CLASSES, pool: int = 1,
                 friedel: bool = False, aux_dim: int = 0):
        super().__init__()
        self.pool, self.friedel = pool, friedel
        w = width
        layers = [nn.Conv2d(2 if friedel else 1, w, 5, 2, 2, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        cin = w
        for i, cout in enumerate([w, 2 * w, 4 * w, 8 * w]):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.backbone = nn.Sequential(*layers)
        self.embed_dim = embed_dim
        self.neck = nn.Sequential(nn.Linear(cin * pool * pool, embed_dim), nn.BatchNorm1d(embed_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(embed_dim, n_classes)
        self._make_aux(aux_dim)


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck: 1x1 reduce, 3x3, 1x1 expand (x4), projected shortcut when the shape changes."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class ResNet50(Classifier):
    """The reference study's ResNet-50 encoder: the torchvision topology ([3, 4, 6, 3] bottlenecks, width
    64, 7x7 stride-2 stem and max-pool, global average pooling), 1-channel input, an 8-class head.
    Kept to reproduce the study's pipeline in the benchmark (benchmarks/seeds.py), not shipped."""

    def __init__(self, width: int = 64, embed_dim: int = 128, n_classes: int = N_CLASSES, pool: int = 1,
                 friedel: bool = False, aux_dim: int = 0):
        super().__init__()
        self.pool, self.friedel = pool, friedel
        layers = [nn.Conv2d(2 if friedel else 1, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        cin = width
        for i, blocks in enumerate([3, 4, 6, 3]):
            w = width * 2 ** i
            for b in range(blocks):
                layers.append(Bottleneck(cin, w, 2 if (b == 0 and i > 0) else 1))
                cin = w * Bottleneck.expansion
        self.backbone = nn.Sequential(*layers)
        self.embed_dim = embed_dim
        self.neck = nn.Sequential(nn.Linear(cin * pool * pool, embed_dim), nn.BatchNorm1d(embed_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(embed_dim, n_classes)
        self._make_aux(aux_dim)


VGG_CONFIGS = {
    "vgg11": [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8],
    "vgg16": [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8],
}


class VGG(Classifier):
    """VGG-style stacks of 3x3 conv + BN + ReLU with max-pools, then global average pooling (no big FC)."""

    def __init__(self, config: str = "vgg11", width: int = 16, embed_dim: int = 128, n_classes: int = N_CLASSES,
                 pool: int = 1, friedel: bool = False, aux_dim: int = 0):
        super().__init__()
        self.pool, self.friedel = pool, friedel
        layers: list[nn.Module] = []
        cin = 2 if friedel else 1
        for v in VGG_CONFIGS[config]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                cout = int(v) * width
                layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        self.backbone = nn.Sequential(*layers)
        self.embed_dim = embed_dim
        self.neck = nn.Sequential(nn.Dropout(0.2), nn.Linear(cin * pool * pool, embed_dim), nn.BatchNorm1d(embed_dim),
                                  nn.ReLU(inplace=True))
        self.head = nn.Linear(embed_dim, n_classes)
        self._make_aux(aux_dim)


class CompactCNN(Classifier):
    """The study's custom CNN, compact: four conv blocks (16-32-64-128), each conv-BN-ReLU-pool."""

    def __init__(self, widths=(16, 32, 64, 128), embed_dim: int = 64, n_classes: int = N_CLASSES, pool: int = 1,
                 friedel: bool = False, aux_dim: int = 0):
        super().__init__()
        self.pool, self.friedel = pool, friedel
        layers: list[nn.Module] = []
        cin = 2 if friedel else 1
        for i, cout in enumerate(widths):
            layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.backbone = nn.Sequential(*layers)
        self.embed_dim = embed_dim
        self.neck = nn.Sequential(nn.Linear(cin * pool * pool, embed_dim), nn.BatchNorm1d(embed_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(embed_dim, n_classes)
        self._make_aux(aux_dim)


class PrototypeHead(nn.Module):
    """Class prototypes on the unit sphere; logits from cosine similarity (see ``prototype.py``)."""

    def __init__(self, embed_dim: int, n_classes: int = N_CLASSES, per_class: int = 4, scale: float = 16.0):
        super().__init__()
        self.n_classes = n_classes
        self.per_class = per_class
        self.scale = scale
        self.prototypes = nn.Parameter(torch.randn(n_classes * per_class, embed_dim) * 0.1)

    def similarities(self, z: torch.Tensor) -> torch.Tensor:
        """(N, n_classes, per_class) cosine similarity of each embedding to each prototype."""
        zn = F.normalize(z, dim=1)
        pn = F.normalize(self.prototypes, dim=1)
        return (zn @ pn.t()).view(-1, self.n_classes, self.per_class)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.scale * self.similarities(z), dim=2)


class VectorHead(nn.Module):
    """The regression regime's head: the embedding -> a 2-vector v = kappa (cos theta, sin theta), the
    in-plane polarization direction theta and a concentration kappa (``regression.py``). Its logits for
    the 8 classes, v . d_k, are the von Mises log-density at each class direction d_k up to a constant,
    so the tools (symmetry images, temperature, votes, confidence) treat it as any classifier."""

    def __init__(self, embed_dim: int, n_classes: int = N_CLASSES):
        super().__init__()
        self.linear = nn.Linear(embed_dim, 2)
        angles = torch.arange(n_classes, dtype=torch.float32) * (2 * math.pi / n_classes)
        self.register_buffer("directions", torch.stack([torch.cos(angles), torch.sin(angles)], dim=1), persistent=False)

    def vector(self, z: torch.Tensor) -> torch.Tensor:
        """(N, 2) predicted vector (x = column, y = row), its length the concentration."""
        return self.linear(z)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vector(z) @ self.directions.t()


class PrototypeNet(nn.Module):
    """A backbone network whose linear head is replaced by a :class:`PrototypeHead`."""

    def __init__(self, base: Classifier, per_class: int = 4, scale: float = 16.0):
        super().__init__()
        self.base = base
        self.embed_dim = base.embed_dim
        self.head = PrototypeHead(base.embed_dim, N_CLASSES, per_class, scale)
        base.head = nn.Identity()

    def embed(self, x):
        return F.normalize(self.base.embed(x), dim=1)

    def forward(self, x):
        return self.head(self.base.embed(x))


ARCHITECTURES = {
    "resnet18": lambda **kw: ResNet18(**kw),
    "resnet50": lambda **kw: ResNet50(**kw),
    "vgg11": lambda **kw: VGG("vgg11", **kw),
    "vgg16": lambda **kw: VGG("vgg16", **kw),
    "cnn": lambda **kw: CompactCNN(**kw),
}


def create_model(arch: str, prototype: dict | None = None, regression: bool = False, **kwargs) -> nn.Module:
    """Build a network by architecture name; ``prototype={"per_class": 4, "scale": 16}`` makes the prototype
    variant, ``regression=True`` the regression variant (a :class:`VectorHead`)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{arch}' (known: {', '.join(ARCHITECTURES)})")
    if prototype and regression:
        raise ValueError("a network is in the prototype or the regression regime, not both")
    net = ARCHITECTURES[arch](**kwargs)
    if prototype:
        net = PrototypeNet(net, **prototype)
    elif regression:
        net.head = VectorHead(net.embed_dim)
    return net


def n_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
