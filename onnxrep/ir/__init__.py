"""The graph IR: an onnx-graphsurgeon graph and the bridge between it and the algebra.

``convert`` imports and exports models (weights loaded once, non-tensor values
kept by ``nontensor``); ``graph`` reads the graph (constants, readers, shapes);
``affine`` and ``lift`` turn ops into conv specs; ``branches`` follows a join's
operands back to their source; ``lower`` writes a spec back as Conv, Gemm or MatMul.
"""
