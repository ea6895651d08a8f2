"""`sdlkit train` (a dictionary from a YAML config) and `sdlkit info` (what a checkpoint holds)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sdlkit.cli.options import add_device, add_json, add_seed, comma_list, command, print_json
from sdlkit.errors import SdlkitError


def add_commands(sub: argparse._SubParsersAction) -> None:
    train = command(
        sub,
        "train",
        "train a dictionary from a YAML config",
        "The config has data, model (with its method) and train sections: `sdlkit config show` lists every field\n"
        "with its default and doc, `sdlkit config example NAME --out FILE` writes a commented example.\n"
        "Writes checkpoints and metrics.jsonl into --out; --resume continues bit-identically.",
    )
    train.add_argument(
        "--config",
        default=None,
        help="YAML file with data, model (with method) and train sections (start from `sdlkit config example`; "
        "or use --model)",
    )
    train.add_argument(
        "--model",
        default=None,
        metavar="NAME_OR_PATH",
        help="train straight from this live model (sets data: {kind: model}; nothing is written to disk but the run)",
    )
    train.add_argument("--modules", default=None, help="with --model: the modules to record, as harvest takes them")
    train.add_argument("--data", default=None, help="with --model: the texts (.txt, .jsonl, .parquet or a hub dataset)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=1e-3 (repeatable)",
    )
    train.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    train.add_argument("--overwrite", action="store_true", help="delete the run folder first (only one sdlkit wrote)")
    train.add_argument(
        "--anchors-from",
        default=None,
        metavar="ground_truth|labels|FILE",
        help="anchor latents to the bench's ground truth, to a labelled store's class means, or to the directions "
        "in a safetensors FILE (from `sdlkit anchors discover`) (sets train.anchors)",
    )
    train.add_argument(
        "--anchors", type=int, default=None, metavar="K", help="number of anchored latents (a FILE: default all)"
    )
    add_device(train, "the config's, else cpu")
    add_seed(train, "initialisation and training randomness (default: the config's)")
    add_json(train, "the final metrics and the checkpoint")
    train.set_defaults(func=cmd_train)

    info = command(
        sub,
        "info",
        "describe a checkpoint",
        "Its method, shape, constraints, training step and tensors, and a run's curves.png and TensorBoard folder.",
    )
    info.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its latest checkpoint)")
    add_json(info, "the checkpoint's config and tensor shapes")
    info.set_defaults(func=cmd_info)


def _values(args: argparse.Namespace, load_yaml) -> dict:
    """The config's values, with a live-model data section from --model/--modules/--data when given."""
    if args.config is None and args.model is None:
        raise SdlkitError("give --config FILE, or --model NAME --modules M --data FILE to train from a live model")
    values = load_yaml(args.config) if args.config else {}
    if args.model is None:
        if args.modules is not None or args.data is not None:
            raise SdlkitError("--modules and --data go with --model (a live model); a config names a store's modules")
        return values
    if args.modules is None or args.data is None:
        raise SdlkitError("--model needs --modules (e.g. --modules transformer.h.6) and --data (a text file)")
    data = values.get("data") if isinstance(values.get("data"), dict) else {}
    data = data if data.get("kind") == "model" else {}
    modules = comma_list(args.modules)
    values["data"] = {**data, "kind": "model", "model": args.model, "modules": modules, "data": args.data}
    if "model" not in values and not any(a.startswith("model.") for a in args.set):
        raise SdlkitError("--model without --config: give the dictionary's size, e.g. --set model.n_latents=16384")
    return values


def _overrides(args: argparse.Namespace, values: dict) -> list[str]:
    """--set, plus what --device, --seed and the anchor flags set."""
    overrides = list(args.set)
    if args.device is not None:
        overrides.append(f"device={args.device}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.anchors_from not in (None, "ground_truth", "labels"):
        return overrides + _file_overrides(args, values)
    if args.anchors_from is not None or args.anchors is not None:
        anchors = (values.get("train") or {}).get("anchors") or {}
        if args.anchors is None and "count" not in anchors:
            raise SdlkitError(
                "--anchors-from needs the number of anchors: --anchors K (the paper: 30 of ImageNet's 1000 classes, "
                "100 of the bench's 1000 features)"
            )
        overrides += [f"train.anchors.count={args.anchors}"] if args.anchors is not None else []
        overrides += [f"train.anchors.source={args.anchors_from}"] if args.anchors_from is not None else []
    return overrides


def _file_overrides(args: argparse.Namespace, values: dict) -> list[str]:
    """--anchors-from FILE: the file (absolute, with its SHA-256) and the count (--anchors, the config's, or
    every direction in the file)."""
    from sdlkit.io import sha256
    from sdlkit.train.anchoring import load_anchors

    path = Path(args.anchors_from)
    if not path.is_file():
        raise SdlkitError(
            f"--anchors-from {args.anchors_from}: not ground_truth, labels, or an existing anchors file "
            "(write one with `sdlkit anchors discover`)"
        )
    count = args.anchors or ((values.get("train") or {}).get("anchors") or {}).get("count")
    count = count or load_anchors(path).k
    return [
        "train.anchors.source=file",
        f"train.anchors.file={json.dumps(str(path.resolve()))}",  # quoted: a path or digest stays a string
        f"train.anchors.file_sha256={json.dumps(sha256(path))}",
        f"train.anchors.count={count}",
    ]


def cmd_train(args: argparse.Namespace) -> int:
    from sdlkit.config import load_yaml, run_config
    from sdlkit.data import build_source
    from sdlkit.io import check_output_folder, remove_owned_folder
    from sdlkit.train import Trainer, distributed

    values = _values(args, load_yaml)
    config = run_config(values, _overrides(args, values))
    out = Path(args.out or Path("runs") / (Path(args.config).stem if args.config else Path(args.model).name))
    dist, device = distributed.from_environment(config.device)  # under torchrun: join the group
    try:
        if dist is None or dist.is_main:
            if args.overwrite:
                remove_owned_folder(out, "run")
            else:
                check_output_folder(out, "run")
        if dist is not None:
            config = config.model_copy(update={"device": device})
            distributed.barrier()
        source = build_source(config.data, config.device)
        trainer = Trainer(config, source, out, dist=dist)
        result = trainer.fit(resume=args.resume)
    finally:
        if "source" in locals() and hasattr(source, "close"):
            source.close()
        distributed.shutdown()
    if trainer.is_main:
        _print_result(args, config, source, trainer, result)
    return 0


def _print_result(args: argparse.Namespace, config, source, trainer, result) -> None:
    """The run's final metrics (and recovery, where the data has known directions) as a table or JSON."""
    from sdlkit.report import format_table

    row = {
        "method": config.model.method.name,
        "steps": result.steps,
        "samples": result.samples_seen,
        **{k: result.metrics[k] for k in ("mse", "fvu", "l0", "never_fired_fraction", "dead_fraction", "n_samples")},
        "seconds": round(result.train_seconds, 1),
    }
    note = None
    truth = source.known_directions()  # bench ground truth or class means: say how many were found
    if truth is not None:
        from sdlkit.eval.recovery import dictionary_recovery

        anchored = trainer.anchors.indices if trainer.anchors is not None else []
        if trainer.anchors is not None and not anchored:  # anchors from a file: the features they stand for
            from sdlkit.train.anchoring import matched_features

            anchored = matched_features(trainer.anchors, truth.W_r)
        recovery = dictionary_recovery(result.model, truth.W_p, truth.W_r, exclude=anchored)
        keys = ("gt_recovery", "max_inner_product", "gt_recovery_decoder", "max_inner_product_decoder")
        row.update({k: recovery[k] for k in keys})
        if truth.kind == "labels":
            note = f"recovery is scored against the class means of {len(truth.names) - len(anchored)} classes"
    if args.json:
        print_json({**row, "checkpoint": str(result.checkpoint)})
        return
    if note:
        print(note)
    print(format_table([row], list(row)))
    print(f"checkpoint: {result.checkpoint}")


def cmd_info(args: argparse.Namespace) -> int:
    from sdlkit.io import WEIGHTS_FILE, read_config, resolve_checkpoint, tensor_shapes
    from sdlkit.train.runlog import watch_files

    folder = resolve_checkpoint(args.checkpoint)
    config = read_config(folder)
    shapes = tensor_shapes(folder / WEIGHTS_FILE)
    run_dir = folder.parent.parent if folder.parent.name == "checkpoints" else folder  # a training checkpoint's run
    watch = {name: str(path) for name, path in watch_files(run_dir).items()}
    if args.json:
        print_json({**config, "tensors": shapes, **watch})
        return 0
    model = config["model"]
    method = dict(model["method"])
    name = method.pop("name")
    print(f"checkpoint  {folder}")
    print(f"method      {name}  " + " ".join(f"{k}={v}" for k, v in method.items() if v is not None))
    print(
        f"shape       n_in={model['n_in']} -> n_latents={model['n_latents']} -> n_out={model['n_out']}"
        + (f"  sources in={model['in_blocks']} out={model['out_blocks']}" if len(model["in_blocks"]) > 1 else "")
    )
    print(f"constraints bias={model['bias']} unit_norm_decoder={model['unit_norm_decoder']} dtype={model['dtype']}")
    if "step" in config:
        run = config.get("run", {})
        batch = run.get("train", {}).get("batch_size", 0)
        print(
            f"training    step {config['step']} of {run.get('train', {}).get('steps')} "
            f"({config['step'] * batch:,} samples), data: {_data_name(run.get('data', {}))}"
        )
    print("tensors     " + ", ".join(f"{k} {v}" for k, v in shapes.items()))
    for name, path in watch.items():  # curves.png; TensorBoard's folder, for `tensorboard --logdir`
        print(f"{name:<11} {path}")
    return 0


def _data_name(data: dict) -> str:
    if data.get("kind") == "model":
        models = data["model"] if isinstance(data["model"], str) else ", ".join(data["model"])
        return f"live model {models} ({', '.join(data.get('inputs') or data['modules'])}) on {data['data']}"
    if "store" in data:
        modules = data.get("inputs") or ["all modules"]
        targets = f" -> {', '.join(data['targets'])}" if data.get("targets") else ""
        return f"store {data['store']} ({', '.join(modules)}{targets})"
    if data.get("kind") == "array":
        return f"array {data['path']}" + (f" -> {data['targets']}" if data.get("targets") else "")
    if data.get("kind") == "tensor":
        return (
            f"a tensor from Python, {data['rows']} x {data['width']} {data['dtype']}, sha256 {data['fingerprint'][:12]}"
        )
    if data.get("kind", "lrb") != "lrb":
        return f"{data['kind']}" + (f" ({data['description']})" if data.get("description") else "")
    return f"{data.get('mode', '?')} LRB"
