"""Running a checkpoint: its settings and loader, the shared options, single-image and
batched prediction, the classifier's crop scores.

The Python API in three lines::

    from common.inference import load_model, predict
    model = load_model("mvssnet_casia.pt", torch.device("cpu"))
    levels, score = predict(model, cv2.imread("photo.jpg"))  # uint8 map, image score

``predict`` gives exactly the 8-bit map and score the inference scripts write.
"""

from common.inference.settings import ModelSpec, load_model
from common.inference.single_image import predict

__all__ = ["ModelSpec", "load_model", "predict"]
