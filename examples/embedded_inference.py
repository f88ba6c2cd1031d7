"""The minimal on-device program: load an exported model, classify one image, print the top 5.

    python examples/embedded_inference.py resnet18.onnx cat.jpg

Needs only the device install (`pip install "edgecnn[cpu]"`: numpy, onnxruntime, Pillow);
PyTorch is never imported. The preprocessing (resize, crop, mean/std) comes from the model's
own metadata, so nothing here depends on which model it is.
"""

import sys

from edgecnn.runtime import Engine


def main(model_path: str, image_path: str) -> None:
    engine = Engine(model_path)  # provider="auto": TensorRT -> CUDA -> CPU, whichever is installed
    print(f"{engine.metadata.model} on {engine.providers[0]}")
    for label, probability in engine.predict(image_path, top_k=5):
        print(f"{probability:7.2%}  {label}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: embedded_inference.py MODEL.onnx IMAGE")
    main(sys.argv[1], sys.argv[2])
