"""Run in a patched tree (PYTHONPATH=<tree>): iterate upstream's video Dataset the way ImaginaireTrainer.train does
(a new iter() after every StopIteration) and print what happened as one JSON line.

    python loader_probe.py DATASET_DIR --workers N --batches B --loader endless|upstream [--size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from torch.utils.data import DataLoader, DistributedSampler

from cosmos_predict2.data.dataset_video import Dataset
from cosmos_predict2.data.loader import endless


class PidDataset(Dataset):
    def __getitem__(self, index):
        data = super().__getitem__(index)
        data["pid"] = os.getpid()
        return data


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("dataset_dir")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--loader", choices=("endless", "upstream"), default="endless")
    p.add_argument("--frames", type=int, default=13)
    p.add_argument("--size", type=int, default=64)
    a = p.parse_args()
    ds = PidDataset(dataset_dir=a.dataset_dir, num_frames=a.frames, video_size=(a.size, a.size))
    sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0)
    dl = DataLoader(ds, sampler=sampler, batch_size=1, drop_last=True, num_workers=a.workers, pin_memory=False)
    if a.loader == "endless":
        dl = endless(dl)
    iters, pids, names, ahead, shapes = 0, [], [], [], set()
    done = False
    while not done:  # ImaginaireTrainer.train's loop
        it = iter(dl)
        iters += 1
        while True:
            try:
                batch = next(it)
            except StopIteration:
                break
            pids.append(int(batch["pid"][0]))
            names.append(os.path.basename(batch["video_name"]["video_path"][0]))
            shapes.add((str(batch["video"].dtype), tuple(batch["video"].shape)))
            # batches already requested from the workers beyond the ones received (prefetch in flight)
            ahead.append(int(getattr(it, "_send_idx", 0) - getattr(it, "_rcvd_idx", 0)))
            if len(names) >= a.batches:
                done = True
                break
    print(json.dumps({"iter_calls": iters, "pids": pids, "names": names, "ahead": ahead, "epoch_len": len(dl),
                      "clips": len(ds), "shapes": sorted(map(list, shapes))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
