"""Model export: ONNX graphs (preprocessing and flip-TTA inside) and int8 quantisation."""
