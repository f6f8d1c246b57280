"""torch → ONNX export, simplification, graph hygiene and the `make export` pipeline."""
