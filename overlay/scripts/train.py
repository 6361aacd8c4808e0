"""Training entry point: `torchrun ... -m scripts.train --config=cosmos_predict2/configs/base/config.py -- experiment=NAME [key=value ...]`.

The sdist of cosmos-predict2 ships no scripts/, so the overlay provides this launcher. It drives upstream's own
config system and ImaginaireTrainer unchanged; the device (NPU / CUDA / CPU) and the collective backend come from
cosmos_predict2.portable.device through the patched imaginaire.utils.distributed.init().
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a Cosmos-Predict2 experiment with upstream's trainer.")
    p.add_argument("--config", required=True, help="config file, e.g. cosmos_predict2/configs/base/config.py")
    p.add_argument("--dryrun", action="store_true", help="resolve the config, write config.yaml, do not train")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=None,
                   help="overrides after '--': experiment=NAME key.sub=value ...")
    return p.parse_args(argv)


def run(config, dryrun: bool, opts: list[str]) -> None:
    from imaginaire.config import pretty_print_overrides
    from imaginaire.lazy_config import instantiate
    from imaginaire.lazy_config.lazy import LazyConfig
    from imaginaire.utils import distributed

    if dryrun:
        print(config.pretty_print(use_color=False) + "\n" + pretty_print_overrides(opts, use_color=False))
        os.makedirs(config.job.path_local, exist_ok=True)
        LazyConfig.save_yaml(config, f"{config.job.path_local}/config.yaml")
        print(f"{config.job.path_local}/config.yaml")
        return
    # The process group must exist before validate(): it broadcasts the job name across ranks.
    distributed.init()
    config.validate()
    config.freeze()  # type: ignore[attr-defined]
    trainer = config.trainer.type(config)
    model = instantiate(config.model)
    dataloader_train = instantiate(config.dataloader_train)
    dataloader_val = instantiate(config.dataloader_val)
    trainer.train(model, dataloader_train, dataloader_val)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from imaginaire.utils.config_helper import get_config_module, override

    opts = list(args.opts or [])
    if opts and opts[0] != "--":  # upstream's override() insists on the separator; accept it either way
        opts.insert(0, "--")
    config = importlib.import_module(get_config_module(args.config)).make_config()
    config = override(config, opts)
    run(config, args.dryrun, opts[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
