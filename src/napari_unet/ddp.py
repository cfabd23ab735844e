"""Multi-process training with ``torchrun`` and DistributedDataParallel.

Launch one process per GPU (or several CPU processes) with torchrun::

    torchrun --nproc_per_node=4 -m napari_unet.ddp --set FOLDER -o model.pt --iterations 2000
    # the same, without the torchrun script:
    python -m torch.distributed.run --nproc_per_node=2 -m napari_unet.ddp --images a.tif --labels a_labels.tif -o m.pt

The arguments are those of ``napari-unet train`` (plus ``--sync-bn``). Each process runs
:func:`napari_unet.training.train_iter` -- the same data path, augmentation, loss,
optimiser and schedule -- with its network wrapped in ``DistributedDataParallel``
(backend ``nccl`` on GPUs, ``gloo`` on CPUs), which averages the gradients of all
processes at every step.

Semantics compared with one process:

* **Effective batch** = N x ``--batch-size`` (each rank draws its own ``batch_size``
  crops); the learning rate and schedule are NOT rescaled, so N processes with batch B
  behave like one process with batch N x B and the same ``--lr``, at 1/N of the time per
  sample. Halve ``--batch-size`` to keep the one-process effective batch.
* **Randomness**: rank r seeds its crop sampler and augmentation with ``seed + r``, so
  the ranks see different crops. The network starts from rank 0's weights (DDP
  broadcasts them), so the ranks' parameters stay identical.
* **BatchNorm**: plain BatchNorm, statistics of each rank's own batch; running
  statistics are broadcast from rank 0 before every forward pass (DDP's
  ``broadcast_buffers``). ``--sync-bn`` converts to ``SyncBatchNorm`` (statistics over
  the effective batch) -- GPUs only: PyTorch's SyncBatchNorm has no CPU kernel, and with
  batches of several 100+ px tiles the per-rank statistics are already stable.
* **Validation, checkpoints, the output file**: rank 0 only (it holds the validation
  split; the other ranks train on the same training split). Every rank runs exactly
  ``--iterations`` steps, which is why ``--max-time``, early stopping and ``--resume``
  (its random state is rank 0's) are refused under DDP.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class DDPResult:
    """One rank's outcome of :func:`ddp_train`.

    Attributes:
        model: the trained model (rank 0's is the one to save).
        rank, world_size: this process and the number of processes.
        checksum: :func:`parameter_checksum` of the final training weights; equal on all
            ranks when they stayed in sync.
    """

    model: Any
    rank: int
    world_size: int
    checksum: float


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _rank_device(device: str | None, sync_batchnorm: bool) -> tuple[int, int, int, torch.device]:
    """This process's rank, the world size, its local rank and its device (torchrun's environment)."""
    if "WORLD_SIZE" not in os.environ:
        raise ValueError("no process group: launch with torchrun (python -m torch.distributed.run --nproc_per_node=N ...)")
    rank = _env_int("RANK", 0)
    world = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    use_cuda = device in (None, "auto", "cuda") and torch.cuda.is_available()
    if device == "cuda" and not use_cuda:
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
        # N processes on one host share its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    if sync_batchnorm and not use_cuda:
        raise ValueError("SyncBatchNorm needs GPUs (PyTorch has no CPU kernel for it); drop --sync-bn on CPUs")
    return rank, world, local_rank, dev


def ddp_train(
    images: Sequence[Any],
    labels: Sequence[Any],
    model: Any = None,
    *,
    regions: Sequence[Any] | None = None,
    device: str | None = None,
    backend: str | None = None,
    sync_batchnorm: bool = False,
    seed: int = 0,
    val_fraction: float = 0.2,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: Any = None,
    **train_kwargs: Any,
) -> Any:
    """Train with DistributedDataParallel in a process started by torchrun.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` from the
    environment (set by torchrun), joins the process group (``env://``), trains with
    :func:`napari_unet.training.train_iter` and leaves the group.

    Args:
        images, labels, model, regions: as for :func:`napari_unet.training.train_iter`.
        device: ``None``/``"auto"`` (this rank's GPU ``cuda:LOCAL_RANK`` when there are
            GPUs, else the CPU), ``"cuda"`` or ``"cpu"``.
        backend: process-group backend; None = ``nccl`` on GPUs, ``gloo`` on CPUs.
        sync_batchnorm: use SyncBatchNorm (GPUs only).
        seed: base seed; rank r uses ``seed + r``.
        val_fraction: share held out for validation (validated on rank 0 only).
        checkpoint_dir: checkpoints (written by rank 0 only).
        progress: tqdm-like bar (rank 0 only).
        **train_kwargs: further options of ``train_iter`` (``iterations``, ``batch_size``,
            ``lr``, ``tile_size``, ``val_images``...).

    Returns:
        a :class:`DDPResult`: the trained model (best by validation on rank 0, which
        validates; the last weights on the others) and a checksum of the last weights.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ._progress import drain
    from .training import train_iter
    from .training_data import split_for_validation

    for bad in ("max_time", "early_stopping", "resume"):
        if train_kwargs.get(bad) is not None:
            raise ValueError(
                f"{bad} is not supported with DDP: every rank must run the same number of steps "
                "(and start from its own random state); give iterations instead"
            )
    rank, world, local_rank, dev = _rank_device(device, sync_batchnorm)
    use_cuda = dev.type == "cuda"
    backend = backend or ("nccl" if use_cuda else "gloo")
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    try:
        images, labels = list(images), list(labels)
        regs = list(regions) if regions is not None else None
        if train_kwargs.get("val_images") is None and val_fraction > 0:
            # the split is deterministic: every rank trains on the same images; rank 0 validates
            images, labels, regs, va_i, va_l, va_r = split_for_validation(images, labels, regs, val_fraction)
            if rank == 0 and va_i:
                train_kwargs.update(val_images=va_i, val_labels=va_l, val_regions=va_r)
        elif rank != 0:
            for key in ("val_images", "val_labels", "val_regions"):
                train_kwargs.pop(key, None)

        live: dict[str, torch.nn.Module] = {}

        def wrap(net: torch.nn.Module) -> torch.nn.Module:
            live["net"] = net
            if sync_batchnorm:
                net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
            # DDP's default buffer sync: BatchNorm running statistics are rank 0's at every forward
            return DistributedDataParallel(net, device_ids=[local_rank] if use_cuda else None)

        gen = train_iter(
            images, labels, model, regions=regs, device=dev, seed=seed + rank, val_fraction=0.0,
            checkpoint_dir=checkpoint_dir if rank == 0 else None, wrap_network=wrap, oom_retry=False,
            **train_kwargs,
        )
        model = drain(gen, progress if rank == 0 else None)
        dist.barrier()
        return DDPResult(model, rank, world, parameter_checksum(live["net"]))
    finally:
        if own_group:
            dist.destroy_process_group()


def parameter_checksum(model: torch.nn.Module) -> float:
    """Sum of all trainable parameters in float64 (equal on ranks that stayed in sync).

    BatchNorm running statistics are left out: each rank updates them from its own batch
    after DDP broadcast rank 0's at the start of the forward pass.
    """
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))


def build_parser() -> argparse.ArgumentParser:
    from ._cli.train import add_arguments

    parser = argparse.ArgumentParser(
        prog="python -m napari_unet.ddp",
        description="napari-unet train under torchrun with DistributedDataParallel (one process per GPU or CPU share)",
    )
    add_arguments(parser)
    parser.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (GPUs only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m napari_unet.ddp`` (run by torchrun on every rank)."""
    from ._cli.train import load_data
    from .augment import AugmentConfig
    from .model import save_model

    args = build_parser().parse_args(argv)
    rank = _env_int("RANK", 0)
    world = _env_int("WORLD_SIZE", 1)
    try:
        images, labels, regions = load_data(args)
        bar = None
        if rank == 0:
            from ._progress import progress_bar

            bar = progress_bar(f"training ({world} processes)")
        try:
            res = ddp_train(
                images, labels, args.model, regions=regions, device=args.device, sync_batchnorm=args.sync_bn,
                seed=args.seed, val_fraction=args.val_fraction, checkpoint_dir=args.checkpoint_dir, progress=bar,
                iterations=args.iterations, max_time=args.max_time, lr=args.lr, batch_size=args.batch_size,
                tile_size=args.tile_size, resume=args.resume, mode=args.mode,
                augment=AugmentConfig.off() if args.no_augment else AugmentConfig(),
                zoom_to_model=not args.native_scale, tune_postprocess=args.tune_postprocess,
                **({} if args.keep_start is None else {"keep_start": args.keep_start}),
            )
        finally:
            if bar is not None:
                bar.close()
    except ValueError as exc:
        print(f"napari-unet ddp (rank {rank}): error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    # one line per rank, so a launcher (or a test) can check that the ranks agree; one
    # write call, so the ranks' lines do not interleave on a shared stdout
    sys.stdout.write(f"rank {rank}/{world}: {res.model.meta['history'][-1]['iterations']} iterations, "
                     f"parameter checksum {res.checksum!r}\n")
    sys.stdout.flush()
    if rank == 0:
        out = save_model(res.model, Path(args.output))
        print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
