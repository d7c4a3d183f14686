"""The one ONNX runtime layer of fabguard: sessions, artifact metadata, export and parity.

Used by anomaly inspection, active-inspection routing and ``fabguard serve`` alike:

- :mod:`~fabguard.runtime.session`: ONNX Runtime sessions (provider order TensorRT, CUDA, CPU; TensorRT
  engine cache and shape profile; idle threads sleep) and :class:`Runtime`, the base of every class that
  serves exported artifacts.
- :mod:`~fabguard.runtime.metadata`: the fabguard metadata inside an ONNX file, read and validated
  without running the graph.
- :mod:`~fabguard.runtime.export`: PyTorch module -> ONNX (needs torch), with metadata.
- :mod:`~fabguard.runtime.parity`: ONNX Runtime vs PyTorch differences and the float32 bound they are
  judged against.

Importing this package imports neither torch nor onnxruntime.
"""
