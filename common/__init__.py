"""The lowest layer: file, ONNX-graph and onnxruntime-session helpers and the manifest contract.

Imports neither torch nor any other layer of the toolchain, so that serving and bundling stay light."""
