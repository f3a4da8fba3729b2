"""Weight transfer between two Ray actors: the object store vs the collective (``hardware.weight_transfer``).

A Qwen2.5-0.5B-shaped state dict (random bf16 weights, ``--shape tiny`` for a smoke test) goes from
a sender actor to a receiver actor in buckets of ``--bucket-mb`` (256, as the trainer cuts them),
``--rounds`` times per transport; the receiver copies every tensor into weights of its own, as an
engine's ``update_weights`` does. Printed: seconds per transfer (median), GiB/s, and whether the
receiver holds the sender's weights bitwise.

- ``object_store``: the sender ``ray.put``s each bucket, the receiver ``ray.get``s them (what
  ``ActorWorker.export_weights`` / ``RolloutWorker.load_weights`` do);
- ``collective``: one broadcast per flat bucket over a stateless group of the two actors
  (:mod:`rlkit.controller.transfer`, the trainer's own code): gloo on CPU, NCCL on CUDA.

NCCL needs the two actors on two GPUs (one GPU cannot be both ends of an NCCL communicator): with
``--device cuda`` and fewer than two GPUs it says so and measures on CPU only::

    python benchmarks/weight_transfer.py                      # CPU, gloo
    python benchmarks/weight_transfer.py --device cuda        # two GPUs: NCCL (one GPU: CPU only)
    python benchmarks/weight_transfer.py --shape tiny --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import ray
import torch


def commit() -> str:
    here = Path(__file__).resolve().parent
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here)
    return out.stdout.strip() or "unknown"


def shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the model shape (built on the meta device: no memory)."""
    from rlkit.models.decoder import CausalLM
    from rlkit.models.shapes import QWEN25_05B, TINY

    with torch.device("meta"):
        model = CausalLM({"0.5b": QWEN25_05B, "tiny": TINY}[name])
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


@ray.remote
class Peer:
    """One end of the transfer: the sender holds random weights, the receiver zeros of the same shapes."""

    def __init__(self, spec: dict[str, tuple[int, ...]], device: str, sender: bool) -> None:
        self.device = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
        gen = torch.Generator(self.device).manual_seed(0)
        make = (lambda s: torch.randn(s, generator=gen, device=self.device)) if sender else torch.zeros
        self.weights = {n: make(s).to(torch.bfloat16).to(self.device) for n, s in spec.items()}
        self.group: Any = None
        self.store: Any = None

    def serve(self) -> tuple[str, int]:
        from rlkit.controller.transfer import TransferGroup

        self.host = ray.util.get_node_ip_address()
        self.store = TransferGroup.serve(self.host, 2)
        return self.host, int(self.store.port)

    def join(self, host: str, port: int, rank: int) -> None:
        from rlkit.controller.transfer import TransferGroup

        here, deadline = ray.util.get_node_ip_address(), time.monotonic() + 120
        self.group = TransferGroup.join(
            host=host, port=port, rank=rank, world=2, device=self.device, store=self.store,
            local_host=here, deadline=deadline, timeout_s=600, stage="benchmark",
        )  # fmt: skip

    def buckets(self, bucket_mb: float) -> list[Any]:
        from rlkit.controller.transfer import plan_buckets

        return plan_buckets(self.weights.items(), bucket_mb * 2**20)

    def put(self, buckets: list[Any]) -> list[Any]:
        """The object-store export: every bucket's tensors on the host, one object each."""
        items = iter(self.weights.items())
        return [ray.put([(n, t.cpu()) for n, t in (next(items) for _ in b.slots)]) for b in buckets]

    def get(self, refs: list[Any]) -> None:
        for ref in refs:
            for name, tensor in ray.get(ref):
                self.weights[name].copy_(tensor)
        self._sync()

    def send(self, buckets: list[Any], version: int) -> None:
        from rlkit.controller.transfer import send

        send(self.group, version, buckets, self.weights.items(), time.monotonic() + 600, "benchmark")
        self._sync()

    def receive(self, buckets: list[Any], version: int) -> None:
        from rlkit.controller.transfer import receive

        for name, tensor in receive(self.group, version, buckets, time.monotonic() + 600, "benchmark", []):
            self.weights[name].copy_(tensor)
        self._sync()

    def zero(self) -> None:
        for tensor in self.weights.values():
            tensor.zero_()

    def checksum(self) -> list[int]:
        return [int(t.view(torch.int16).sum(dtype=torch.int64)) for t in self.weights.values()]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def measure(transport: str, sender: Any, receiver: Any, buckets: list[Any], rounds: int) -> list[float]:
    """Seconds of each round, from the sender's start until the receiver holds every tensor."""
    times = []
    for version in range(rounds):
        started = time.perf_counter()
        if transport == "object_store":
            ray.get(receiver.get.remote(ray.get(sender.put.remote(buckets))))
        else:
            ray.get([sender.send.remote(buckets, version), receiver.receive.remote(buckets, version)])
        times.append(time.perf_counter() - started)
    return times


def run(device: str, shape: str, bucket_mb: float, rounds: int) -> list[dict[str, Any]]:
    spec = shapes(shape)
    gpus = 1 if device == "cuda" else 0
    sender = Peer.options(num_gpus=gpus).remote(spec, device, True)
    receiver = Peer.options(num_gpus=gpus).remote(spec, device, False)
    host, port = ray.get(sender.serve.remote())
    ray.get([sender.join.remote(host, port, 0), receiver.join.remote(host, port, 1)])
    buckets = ray.get(sender.buckets.remote(bucket_mb))
    gib = sum(b.nbytes for b in buckets) / 2**30
    rows = []
    for transport in ("object_store", "collective"):
        ray.get(receiver.zero.remote())
        times = measure(transport, sender, receiver, buckets, rounds)
        exact = ray.get(sender.checksum.remote()) == ray.get(receiver.checksum.remote())
        s = statistics.median(times)
        backend = "gloo" if device == "cpu" else "nccl"
        name = transport if transport == "object_store" else f"collective ({backend})"
        rows.append(
            {"transport": name, "device": device, "GiB": gib, "s": s, "GiB/s": gib / s, "exact": exact}
        )
    for actor in (sender, receiver):
        ray.kill(actor)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=["0.5b", "tiny"], default="0.5b")
    parser.add_argument("--bucket-mb", type=float, default=256.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = args.device
    if device == "cuda" and torch.cuda.device_count() < 2:
        print(
            f"NCCL needs two GPUs (found {torch.cuda.device_count()}): one GPU cannot hold both ends of an "
            "NCCL communicator; measuring on CPU (gloo) only"
        )
        device = "cpu"
    ray.init(num_cpus=4, include_dashboard=False)
    rows = run(device, args.shape, args.bucket_mb, args.rounds)
    where = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    print(f"\nweight transfer, {args.shape} shape, buckets of {args.bucket_mb:g} MiB, {args.rounds} rounds")
    print(f"device {where}, torch {torch.__version__}, commit {commit()}")
    print(f"{'transport':<20} {'device':<6} {'GiB':>6} {'s (median)':>11} {'GiB/s':>7} exact")
    for r in rows:
        print(
            f"{r['transport']:<20} {r['device']:<6} {r['GiB']:>6.2f} {r['s']:>11.3f} "
            f"{r['GiB/s']:>7.2f} {r['exact']}"
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
