"""Training data: seeded random patches with 8-fold flips and transposes.

2D patches come from ``(Y, X)`` planes; 3D patches, ``(D, Y, X)`` with ``D`` the planes or
frames of a stack, from ``(D, Y, X)`` volumes, with a flip of ``D`` as well (16 symmetries).

Patches are a pure function of ``(seed, index)``, so any worker or process cuts the same
patch for the same index and no global random state is involved. The photon split is not
done here but in the training step, on the device, for the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from photongap.errors import PhotongapError
from photongap.physics import draw_split_fraction, split_counts


def augment(patch: np.ndarray, symmetry: int) -> np.ndarray:
    """One of the 8 symmetries of the square in Y and X: ``symmetry % 8 // 2`` quarter turns, then a flip if odd.

    A volume ``(D, Y, X)`` is also flipped along ``D`` for ``symmetry >= 8`` (a z-stack seen
    from below, a movie played backwards: the noise is the same).
    """
    patch = np.rot90(patch, symmetry % 8 // 2, axes=(-2, -1))
    patch = patch[..., ::-1] if symmetry % 2 else patch
    return patch[::-1] if symmetry >= 8 and patch.ndim == 3 else patch


class PatchDataset(Dataset):
    """``length`` random square patches from a set of count images: one rank's share of a run's stream.

    Images are drawn in proportion to their area, the position uniformly, the symmetry
    uniformly among 8. Item ``i`` is ``(1, P, P)`` float32 (with ``depth``: ``(1, depth, P, P)``
    from ``(D, Y, X)`` volumes, 16 symmetries), patch number
    ``n = start + i * world_size + rank`` of the stream, and depends only on ``(seed, n)``:
    the ranks of a distributed run interleave, each drawing its own patches, and a resumed
    run continues with the patches it had not seen.
    """

    def __init__(self, images: Sequence[np.ndarray], patch_size: int, length: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1,
                 depth: int | None = None) -> None:
        self.images = list(images)
        self.patch_size = patch_size
        self.depth = depth
        self.length = length
        self.seed = seed
        self.start = start
        self.rank = rank
        self.world_size = world_size
        areas = np.array([image.size for image in self.images], dtype=np.float64)
        self.weights = areas / areas.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.start + index * self.world_size + self.rank])
        image = self.images[rng.choice(len(self.images), p=self.weights)]
        if self.depth is not None:
            z = rng.integers(0, image.shape[0] - self.depth + 1)
            image = image[z : z + self.depth]
        y = rng.integers(0, image.shape[-2] - self.patch_size + 1)
        x = rng.integers(0, image.shape[-1] - self.patch_size + 1)
        symmetry = int(rng.integers(8 if self.depth is None else 16))
        patch = augment(image[..., y : y + self.patch_size, x : x + self.patch_size], symmetry)
        return torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32))[None]


def grid_patches(images: Sequence[np.ndarray], patch_size: int, limit: int, depth: int | None = None) -> np.ndarray:
    """Non-overlapping patches on a grid, at most ``limit`` spread evenly: ``(N, P, P)``, or ``(N, depth, P, P)`` from volumes."""
    stacks = [image[None] for image in images] if depth is None else [
        image[z : z + depth] for image in images for z in range(0, image.shape[0] - depth + 1, depth)
    ]
    patches = [
        stack[..., y : y + patch_size, x : x + patch_size].squeeze(0) if depth is None else stack[..., y : y + patch_size, x : x + patch_size]
        for stack in stacks
        for y in range(0, stack.shape[-2] - patch_size + 1, patch_size)
        for x in range(0, stack.shape[-1] - patch_size + 1, patch_size)
    ]
    keep = np.linspace(0, len(patches) - 1, min(limit, len(patches))).round().astype(int)
    return np.stack([patches[i] for i in np.unique(keep)]).astype(np.float32)


def hold_out(images: Sequence[np.ndarray], fraction: float, patch_size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split images into training and validation sets.

    Several images: the last ``ceil(fraction * n)`` images (at least one) are held out.
    A single image: its bottom ``fraction`` of rows (at least one patch high); of every plane
    for a single volume.
    """
    images = list(images)
    if fraction == 0:
        return images, []
    if len(images) > 1:
        count = min(len(images) - 1, max(1, int(np.ceil(fraction * len(images)))))
        return images[:-count], images[-count:]
    image = images[0]
    rows = max(patch_size, int(round(fraction * image.shape[-2])))
    if image.shape[-2] - rows < patch_size:
        return images, []
    return [image[..., :-rows, :]], [image[..., -rows:, :]]


class GapDataModule(L.LightningDataModule):
    """Patches for training, and fixed pre-split patches for a comparable validation loss.

    Parameters
    ----------
    images : sequence of np.ndarray
        2D photon-count images, each at least ``patch_size`` on both sides; with
        ``patch_depth``, ``(D, Y, X)`` volumes of at least ``patch_depth`` planes.
    names : sequence of str, optional
        What to call each image in error messages (e.g. its file).
    patch_depth : int, optional
        Planes of 3D patches (None: 2D patches).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        *,
        patch_size: int,
        batch_size: int,
        steps: int,
        val_fraction: float,
        split_range: tuple[float, float],
        split_relative: bool,
        seed: int,
        names: Sequence[str] | None = None,
        validation_patches: int = 64,
        patch_depth: int | None = None,
    ) -> None:
        super().__init__()
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        if not images:
            raise PhotongapError("no training images")
        for image, name in zip(images, names):
            if image.ndim != (2 if patch_depth is None else 3):
                kind = "2D planes" if patch_depth is None else "(D, Y, X) volumes (a 3D model trains on stacks with a Z or T axis)"
                raise PhotongapError(f"{name}: expected {kind} for training, got shape {image.shape}")
            if min(image.shape[-2:]) < patch_size:
                raise PhotongapError(f"{name}: image of {image.shape[-2]}x{image.shape[-1]} px is smaller than the patch size {patch_size}; use a smaller --patch-size")
            if patch_depth is not None and image.shape[0] < patch_depth:
                raise PhotongapError(f"{name}: a stack of {image.shape[0]} planes is thinner than the patch depth {patch_depth}; use a smaller depth in --patch-size D Y X")
        self.train_images, val_images = hold_out(images, val_fraction, patch_size)
        self.patch_size, self.batch_size, self.steps, self.seed = patch_size, batch_size, steps, seed
        self.patch_depth = patch_depth
        self.val_split = None
        if val_images:
            counts = torch.from_numpy(grid_patches(val_images, patch_size, validation_patches, patch_depth))[:, None]
            generator = torch.Generator().manual_seed(seed + 7919)
            fraction = draw_split_fraction(counts, *split_range, relative=split_relative, generator=generator)
            self.val_split = split_counts(counts, fraction, generator)

    def train_dataloader(self) -> DataLoader:
        """This rank's patches for the rest of the run, as one epoch.

        Called after a checkpoint is restored. Every rank draws its own patches (the stream is
        interleaved by rank, so the Trainer must not add a distributed sampler), and a resumed
        run starts after the ``global_step * batch_size * world_size`` patches all ranks used.
        The epoch keeps the length of the whole run: Lightning, restarting mid-epoch, counts the
        batches it had fetched before the checkpoint into this one, and would otherwise end it
        early and start it again from its first patches.
        """
        trainer = self.trainer
        done, rank, world_size = (trainer.global_step, trainer.global_rank, trainer.world_size) if trainer is not None else (0, 0, 1)
        patches = PatchDataset(
            self.train_images, self.patch_size, self.steps * self.batch_size, self.seed,
            start=done * self.batch_size * world_size, rank=rank, world_size=world_size, depth=self.patch_depth,
        )
        return DataLoader(patches, batch_size=self.batch_size, shuffle=False, num_workers=0, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        if self.val_split is None:
            return []  # type: ignore[return-value]
        pairs = torch.utils.data.TensorDataset(self.val_split.input_counts, self.val_split.target_counts)
        return DataLoader(pairs, batch_size=self.batch_size * 2, shuffle=False)
