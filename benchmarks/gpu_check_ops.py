"""mmcv's compiled ops that Mask R-CNN runs, on the GPU against the CPU: RoIAlign and NMS, forward and backward.

At Mask R-CNN's sizes (a stride-4 FPN level of an 800 x 1344 image, 512 RoIs per image pooled to 7 x 7 for the box
head and 14 x 14 for the mask head; 2,000 RPN proposals through NMS at IoU 0.7), in float32: RoIAlign's output and
its gradient with respect to the feature map, NMS's kept boxes and the gradient through the kept boxes and scores.
The GPU's RoIAlign backward accumulates with atomics, so it matches the CPU's to float32 rounding, not bit for bit.
Exits 1 when a result disagrees.

    python benchmarks/gpu_check_ops.py                   # on a GPU node, with mmcv built with CUDA ops
    python benchmarks/gpu_check_ops.py --device cpu --small   # the same comparisons, CPU against itself
"""

import argparse
import sys
import time
from collections.abc import Callable

import torch
from mmcv.ops import get_compiling_cuda_version, nms, roi_align


def random_rois(images: int, per_image: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(batch index, x1, y1, x2, y2) rows in input pixels, as Mask R-CNN's RoI heads receive them."""
    corners = torch.rand(images * per_image, 2, generator=generator) * torch.tensor([width, height])
    sizes = torch.rand(images * per_image, 2, generator=generator) * torch.tensor([width, height]) / 4 + 8
    index = torch.arange(images).repeat_interleave(per_image).float()[:, None]
    return torch.cat([index, corners, corners + sizes], dim=1)


def random_boxes(count: int, side: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping proposals with distinct scores (so that NMS's order is defined)."""
    corners = torch.rand(count, 2, generator=generator) * side
    boxes = torch.cat([corners, corners + 16 + torch.rand(count, 2, generator=generator) * side / 3], dim=1)
    return boxes, torch.randperm(count, generator=generator).float() / count


def roi_align_results(features, rois, size: int, upstream, device) -> tuple[torch.Tensor, torch.Tensor]:
    features = features.to(device).requires_grad_()
    pooled = roi_align(features, rois.to(device), (size, size), 1 / 4, 0, "avg", True)
    pooled.backward(upstream.to(device))
    return pooled.detach().cpu(), features.grad.cpu()


def nms_results(boxes, scores, upstream_weight, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    boxes, scores = boxes.to(device).requires_grad_(), scores.to(device).requires_grad_()
    kept, _ = nms(boxes, scores, iou_threshold=0.7)
    (kept * upstream_weight.to(device)).sum().backward()
    return kept.detach().cpu(), boxes.grad.cpu(), scores.grad.cpu()


def timed(function: Callable, *args, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = function(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="a 1/8-size feature map and 64 RoIs (a smoke test)")
    args = parser.parse_args()
    device = torch.device(args.device)
    scale = 8 if args.small else 1
    generator = torch.Generator().manual_seed(0)
    print(f"mmcv ops compiled with CUDA {get_compiling_cuda_version()}; comparing {device} against cpu")

    height, width, images = 800 // scale, 1344 // scale, 2
    features = torch.randn(images, 256, height // 4, width // 4, generator=generator)
    rois = random_rois(images, 512 // scale, height, width, generator)
    failures = []
    for size in (7, 14):
        upstream = torch.randn(len(rois), 256, size, size, generator=generator)
        expected = roi_align_results(features, rois, size, upstream, torch.device("cpu"))
        (pooled, grad), seconds = timed(roi_align_results, features, rois, size, upstream, device, device=device)
        pooled_error = (pooled - expected[0]).abs().max().item()
        grad_error = (grad - expected[1]).abs().max().item()
        ok = pooled_error < 1e-4 and grad_error < 1e-3
        failures += [] if ok else [f"roi_align {size}x{size}"]
        print(
            f"roi_align {size:>2}x{size:<2} {len(rois)} RoIs: forward max |Δ| {pooled_error:.1e}, "
            f"backward max |Δ| {grad_error:.1e}, {seconds * 1e3:.1f} ms on {device}  {'ok' if ok else 'MISMATCH'}"
        )

    boxes, scores = random_boxes(2000 // scale, 1344 // scale, generator)
    upstream_weight = torch.randn(1, 5, generator=generator)
    expected = nms_results(boxes, scores, upstream_weight, torch.device("cpu"))
    (kept, boxes_grad, scores_grad), seconds = timed(nms_results, boxes, scores, upstream_weight, device, device=device)
    same_kept = kept.shape == expected[0].shape and torch.equal(kept, expected[0])
    grads_equal = torch.equal(boxes_grad, expected[1]) and torch.equal(scores_grad, expected[2])
    ok = same_kept and grads_equal
    failures += [] if ok else ["nms"]
    print(
        f"nms {len(boxes)} boxes at IoU 0.7: {len(kept)} kept on {device}, {len(expected[0])} on cpu, "
        f"same boxes {same_kept}, same gradients {grads_equal}, {seconds * 1e3:.1f} ms  {'ok' if ok else 'MISMATCH'}"
    )
    if failures:
        print("mmcv ops disagree with the CPU: " + ", ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
