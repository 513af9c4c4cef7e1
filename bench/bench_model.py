"""Measure AXM-Net's inference cost on this machine beside the bare backbones, as a Markdown table.

Each variant runs in its own process, so peak memory is per variant. For each one the table gives the
parameters, image embeddings/s next to a bare EfficientNet-Lite0 forward (the full ImageNet network at
the same input size), text embeddings/s next to a bare MiniLM forward on the same token batch, and the
peak RSS.

    HF_HUB_OFFLINE=1 python bench/bench_model.py --variants axm baseline --batch-sizes 1 32
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

# Real CUHK-PEDES-style descriptions (23-30 words, the dataset's typical length).
CAPTIONS = [
    "A man wearing a black jacket over a white shirt, dark blue jeans and black shoes. He is carrying a grey "
    "backpack on his shoulders and looking down.",
    "The woman has long brown hair tied in a ponytail. She wears a pink short sleeved top, white trousers and "
    "white sneakers, and holds a red handbag.",
    "A young man in a green hooded sweatshirt, black shorts and white socks with sports shoes walks quickly "
    "while holding a phone in his right hand.",
    "An older woman with short grey hair wearing a long beige coat, a patterned scarf and brown boots, "
    "pulling a small dark suitcase behind her.",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["axm", "baseline"], choices=["axm", "baseline"])
    parser.add_argument("--height", type=int, default=256, help="image input height in pixels")
    parser.add_argument("--width", type=int, default=128, help="image input width in pixels")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="image batch sizes")
    parser.add_argument("--text-batch", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--channels", type=int, default=None, help="override axm.channels")
    parser.add_argument("--num-blocks", type=int, default=None, help="override axm.num_blocks")
    parser.add_argument(
        "--min-seconds", type=float, default=2.0, help="time each measurement for at least this long"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser.parse_args(argv)


def time_pair(
    ours: Callable[[], object], bare: Callable[[], object], *, min_seconds: float
) -> dict[str, float]:
    """Time two functions in alternation, so load from other processes hits both alike.

    Returns the median wall seconds per call of each, after one warm-up call each, and the ratio of
    their median CPU seconds (process time over all threads), which a shared machine disturbs less.
    """
    ours()
    bare()
    wall: dict[str, list[float]] = {"ours": [], "bare": []}
    cpu: dict[str, list[float]] = {"ours": [], "bare": []}
    deadline = time.perf_counter() + min_seconds
    while time.perf_counter() < deadline or len(wall["ours"]) < 3:
        for name, function in (("ours", ours), ("bare", bare)):
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            function()
            wall[name].append(time.perf_counter() - wall_start)
            cpu[name].append(time.process_time() - cpu_start)
    return {
        "ours_wall": statistics.median(wall["ours"]),
        "bare_wall": statistics.median(wall["bare"]),
        "cpu_ratio": statistics.median(cpu["ours"]) / statistics.median(cpu["bare"]),
    }


def median_seconds(function: Callable[[], object], *, count: int) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_config(args: argparse.Namespace, variant: str):
    from dataclasses import replace

    from model.config import ModelConfig

    config = ModelConfig(variant=variant)
    config = replace(config, input=replace(config.input, height=args.height, width=args.width))
    axm = replace(
        config.axm,
        channels=args.channels or config.axm.channels,
        num_blocks=args.num_blocks or config.axm.num_blocks,
    )
    return replace(config, axm=axm)


def measure_variant(args: argparse.Namespace, variant: str) -> dict:
    """Build one variant and time it beside the bare backbones; runs in a child process."""
    from model.backbones import EfficientNetLite0
    from model.network import build_model
    from model.weights import packaged_efficientnet_lite0_path, read_state_dict

    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(build_config(args, variant)).eval()
    bare_lite0 = EfficientNetLite0().eval()
    bare_lite0.load_state_dict(read_state_dict(packaged_efficientnet_lite0_path()))
    minilm = model.text_encoder.transformer

    result: dict = {"variant": variant, "rows": []}
    parameters = sum(p.numel() for p in model.parameters())
    text_parameters = sum(p.numel() for p in model.text_encoder.parameters())
    result["parameters"] = (parameters, parameters - text_parameters)

    for batch_size in args.batch_sizes:
        images = torch.randn(batch_size, 3, args.height, args.width)
        with torch.inference_mode():
            timing = time_pair(
                lambda images=images: model.encode_images(images),
                lambda images=images: bare_lite0(images),
                min_seconds=args.min_seconds,
            )
        result["rows"].append((f"image, batch {batch_size}", batch_size, timing, "EfficientNet-Lite0"))

    texts = (CAPTIONS * (args.text_batch // len(CAPTIONS) + 1))[: args.text_batch]
    tokens = model.tokenize(texts)
    with torch.inference_mode():
        timing = time_pair(
            lambda: model.encode_tokens(tokens),
            lambda: minilm(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask),
            min_seconds=args.min_seconds,
        )
    length = tokens.input_ids.shape[1]
    result["rows"].append((f"text, batch {len(texts)} ({length} tokens)", len(texts), timing, "MiniLM-L6"))
    result["tokenize_per_s"] = len(texts) / median_seconds(lambda: model.tokenize(texts), count=20)
    # ru_maxrss is in kilobytes on Linux; it includes the bare EfficientNet-Lite0 (about 20 MB).
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _child(args: argparse.Namespace, variant: str, queue: multiprocessing.Queue) -> None:
    queue.put(measure_variant(args, variant))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def print_rows(result: dict, text_batch: int) -> None:
    total, without_text = result["parameters"]
    parameters = f"{total / 1e6:.1f}M / {without_text / 1e6:.2f}M"
    peak = f"{result['peak_rss_mb']:.0f} MB"
    for index, (path, batch, timing, bare_name) in enumerate(result["rows"]):
        first = index == 0
        cells = [
            result["variant"] if first else "",
            parameters if first else "",
            path,
            f"{batch / timing['ours_wall']:.1f}",
            f"{batch / timing['bare_wall']:.1f} ({bare_name})",
            f"{timing['ours_wall'] / timing['bare_wall']:.2f}× / {timing['cpu_ratio']:.2f}×",
            peak if first else "",
        ]
        print("| " + " | ".join(cells) + " |")
    print(f"| | | tokenisation alone, batch {text_batch} | {result['tokenize_per_s']:.0f} | | | |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    context = multiprocessing.get_context("spawn")
    print(
        f"load average {os.getloadavg()[0]:.1f}; CPU: {cpu_name()}, {os.cpu_count()} cores visible, "
        f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads; "
        f"input {args.height}×{args.width}\n"
    )
    print(
        "| variant | parameters (all / without text encoder) | path | ours /s | bare backbone /s "
        "| ours ÷ bare (wall / CPU time) | peak RSS |"
    )
    print("|---|---|---|---:|---:|---:|---:|")
    for variant in args.variants:
        queue = context.Queue()
        process = context.Process(target=_child, args=(args, variant, queue))
        process.start()
        result = queue.get()
        process.join()
        print_rows(result, args.text_batch)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
