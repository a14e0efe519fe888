"""Data for search and training; nothing is ever downloaded.

* ``digits`` -- scikit-learn's bundled 8x8 digits (1,797 images, the default);
* ``synthetic`` -- class-dependent patterns plus noise (any size, for tests);
* ``cifar10:DIR`` -- CIFAR-10 from a local directory, in its binary format
  (``data_batch_*.bin``) or its python format (``data_batch_1``...), the latter read by
  a restricted unpickler that accepts only the numpy array types those files
  hold, so no code in the file can run;
* ``imagefolder:DIR`` -- any class-per-folder image tree.

The search splits the training set in two halves: one for the weights, one
for the architecture (DARTS's bilevel problem).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from spaces.errors import HwcostError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class DataSpec:
    train: Dataset
    test: Dataset | None
    num_classes: int
    in_channels: int
    input_size: int
    name: str


def _tensor_ds(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))


def digits() -> DataSpec:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0 - 0.5)[:, None]  # 1 x 8 x 8, zero-centred
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    n_test = len(y) // 5
    te, tr = idx[:n_test], idx[n_test:]
    return DataSpec(_tensor_ds(x[tr], y[tr]), _tensor_ds(x[te], y[te]), 10, 1, 8, "digits")


def synthetic(n: int = 512, size: int = 16, classes: int = 4, channels: int = 3, seed: int = 0) -> DataSpec:
    g = np.random.default_rng(seed)
    protos = g.normal(size=(classes, channels, size, size)).astype(np.float32)
    y = g.integers(0, classes, size=n)
    x = protos[y] + 0.5 * g.normal(size=(n, channels, size, size)).astype(np.float32)
    return DataSpec(_tensor_ds(x, y), None, classes, channels, size, "synthetic")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Accept only what CIFAR-10's python batches contain: dicts, lists, bytes, numpy arrays."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise HwcostError(f"refusing to load {module}.{name} from a CIFAR-10 batch file (not plain data)")


def _cifar_python(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        try:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError) as e:
            raise HwcostError(f"{path} is not a CIFAR-10 python batch: {e}") from None
    try:
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise HwcostError(f"{path} is not a CIFAR-10 python batch ({e})") from None
    return x, y


def _cifar_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 3073:
        raise HwcostError(f"{path}: size {raw.size} is not a multiple of 3073 (label + 3x32x32)")
    raw = raw.reshape(-1, 3073)
    return raw[:, 1:].reshape(-1, 3, 32, 32), raw[:, 0].astype(np.int64)


def cifar10(directory: str) -> DataSpec:
    root = Path(directory)
    for sub in (root, root / "cifar-10-batches-bin", root / "cifar-10-batches-py"):
        if sorted(sub.glob("data_batch_*.bin")):
            train = [_cifar_binary(p) for p in sorted(sub.glob("data_batch_*.bin"))]
            test = [_cifar_binary(sub / "test_batch.bin")] if (sub / "test_batch.bin").exists() else []
            break
        if (sub / "data_batch_1").exists():
            train = [_cifar_python(p) for p in sorted(sub.glob("data_batch_[0-9]"))]
            test = [_cifar_python(sub / "test_batch")] if (sub / "test_batch").exists() else []
            break
    else:
        raise HwcostError(f"no CIFAR-10 batches in {root} (expected data_batch_*.bin or data_batch_1..5); "
                          "hwcost never downloads data")
    mean = np.array(CIFAR_MEAN, np.float32)[:, None, None]
    std = np.array(CIFAR_STD, np.float32)[:, None, None]
    norm = lambda x: (x.astype(np.float32) / 255.0 - mean) / std  # noqa: E731
    xtr = np.concatenate([x for x, _ in train])
    ytr = np.concatenate([y for _, y in train])
    te = _tensor_ds(norm(test[0][0]), test[0][1]) if test else None
    return DataSpec(_tensor_ds(norm(xtr), ytr), te, 10, 3, 32, "cifar10")


def imagefolder(directory: str, size: int = 32) -> DataSpec:
    from torchvision import datasets, transforms
    if not Path(directory).is_dir():
        raise HwcostError(f"image folder {directory} does not exist")
    tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])
    ds = datasets.ImageFolder(directory, transform=tf)
    return DataSpec(ds, None, len(ds.classes), 3, size, "imagefolder")


def load_data(spec: str) -> DataSpec:
    """``digits`` | ``synthetic`` | ``cifar10:DIR`` | ``imagefolder:DIR``."""
    name, _, arg = spec.partition(":")
    if name == "digits":
        return digits()
    if name == "synthetic":
        return synthetic()
    if name == "cifar10":
        if not arg:
            raise HwcostError("--data cifar10 needs a directory: cifar10:/path/to/cifar-10-batches-bin")
        return cifar10(arg)
    if name == "imagefolder":
        if not arg:
            raise HwcostError("--data imagefolder needs a directory: imagefolder:/path/to/images")
        return imagefolder(arg)
    raise HwcostError(f"unknown data {spec!r}; use digits, synthetic, cifar10:DIR or imagefolder:DIR")


def search_loaders(data: DataSpec, batch_size: int, seed: int, portion: float = 0.5):
    """Two loaders over disjoint halves of the training set: weights, architecture."""
    n = len(data.train)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    split = int(n * portion)
    mk = lambda idx, s: DataLoader(Subset(data.train, idx), batch_size=batch_size, shuffle=True,  # noqa: E731
                                   generator=torch.Generator().manual_seed(s), drop_last=len(idx) >= batch_size)
    return mk(perm[:split], seed + 1), mk(perm[split:], seed + 2)
