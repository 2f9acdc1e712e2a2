"""The pure algebra of re-parameterization: numpy kernels and conv specs, with no graph in sight.

``kernels`` holds the tensor transforms (fold a BatchNorm, pad, compose, stack);
``spec`` writes a linear op as one convolution (:class:`~onnxrep.algebra.spec.ConvSpec`)
and merges such specs sequentially, in parallel or by concatenation, refusing
what it cannot prove exact.
"""
