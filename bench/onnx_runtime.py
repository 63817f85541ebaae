"""ONNX Runtime as an alternative CPU backend, measured against our torch paths.

Exports the BatchNorm-folded fp32 model (torch.onnx, dynamo exporter), optionally makes
a statically quantised int8 copy (QDQ, per-channel int8 weights, uint8 activations
calibrated on synthetic forgeries), and times them side by side with torch fp32 eager
and the torch fast path (bf16 + channels_last + Winograd head). Accuracy: probability
maps against torch fp32 on synthetic forgeries not used for calibration.

Needs the optional packages of ``requirements-onnx.txt``; the toolkit itself does not.
Writes bench/results/onnx.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bench.shared import (
    calibrated_model,
    interleaved_medians,
    map_accuracy,
    synthetic_images,
    write_result,
)
from common.accel.fast_path import optimize_for_inference
from common.core.user_errors import Parser, UsageError, at_least, positive_int, run_cli
from common.data.transforms import normalize_bgr_batch
from models import BACKBONES


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _quantise(fp32_path: Path, out_dir: Path, calibration: np.ndarray, input_name: str) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [{input_name: calibration[i : i + 1]} for i in range(len(calibration))]
            )

        def get_next(self):
            return next(self.batches, None)

    pre, out = out_dir / "pre.onnx", out_dir / "int8.onnx"
    quant_pre_process(
        str(fp32_path), str(pre), skip_symbolic_shape=True, save_as_external_data=True
    )
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        use_external_data_format=True,
    )
    return out


def run(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=at_least(64), default=512)
    p.add_argument("--backbone", default="resnet50", choices=BACKBONES)
    p.add_argument("--weights", help="checkpoint to compare (default: random init)")
    p.add_argument("--runs", type=positive_int, default=5)
    p.add_argument("--accuracy-images", type=positive_int, default=4)
    p.add_argument("--calibration-images", type=positive_int, default=4)
    p.add_argument("--no-int8", action="store_true", help="skip the int8 model")
    args = p.parse_args(argv)
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            f"needs the optional packages onnxruntime and onnxscript ({exc})",
            hint="pip install -r requirements-onnx.txt",
        ) from None

    base = calibrated_model(args.backbone, args.size, 0, False, args.weights)
    exported = optimize_for_inference(base, pack=False)  # folded BN, fp32: ONNX's graph
    fast = optimize_for_inference(base, torch.bfloat16, True, winograd=True)
    x_all = normalize_bgr_batch(
        torch.from_numpy(synthetic_images(args.accuracy_images, args.size, 11))
    )
    calib = normalize_bgr_batch(
        torch.from_numpy(synthetic_images(args.calibration_images, args.size, 3))
    ).numpy()
    work = Path(tempfile.mkdtemp(prefix="mvss_onnx_"))
    fp32_path = work / "fp32.onnx"
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(exported, (x_all[:1],), str(fp32_path), dynamo=True, external_data=True)
    export_s = time.perf_counter() - start
    sessions = {"onnxruntime fp32": _session(fp32_path)}
    input_name = sessions["onnxruntime fp32"].get_inputs()[0].name
    quantise_s = None
    if not args.no_int8:
        start = time.perf_counter()
        sessions["onnxruntime int8 (static QDQ)"] = _session(
            _quantise(fp32_path, work, calib, input_name)
        )
        quantise_s = time.perf_counter() - start

    def ort_run(sess):
        return lambda x: tuple(torch.from_numpy(o) for o in sess.run(None, {input_name: x.numpy()}))

    paths = {
        "torch fp32 eager": base,
        "torch fast bf16 + channels_last + winograd": fast,
        **{name: ort_run(sess) for name, sess in sessions.items()},
    }
    rows = []
    accuracy = map_accuracy(paths, "torch fp32 eager", x_all)
    with torch.inference_mode():
        x = x_all[:1]
        medians = interleaved_medians(
            {name: (lambda fn=fn: fn(x)) for name, fn in paths.items()}, runs=args.runs
        )
    header = ("s/img", "speed-up", "mean/255", "max/255", "agree %")
    print(f"{'path':45s} " + " ".join(f"{h:>8s}" for h in header))
    for name, t in medians.items():
        row = {"path": name, "s_per_image": t, "speedup": medians["torch fp32 eager"] / t}
        row.update(accuracy[name])
        rows.append(row)
        print(
            f"{name:45s} {t:7.3f} {row['speedup']:7.2f}x {row['mean_abs_255']:8.3f} "
            f"{row['max_abs_255']:8.2f} {100 * row['binary_agreement']:8.3f}"
        )
    print(
        f"export {export_s:.1f} s"
        + (f", int8 quantisation {quantise_s:.1f} s" if quantise_s else "")
    )
    write_result(
        "onnx",
        {
            "rows": rows,
            "export_s": export_s,
            "quantise_s": quantise_s,
            "size": args.size,
            "backbone": args.backbone,
            "weights": args.weights,
            "threads": torch.get_num_threads(),
        },
    )

    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
